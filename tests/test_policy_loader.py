"""supervisor.policy.loader: YAML → Policy, or every problem as `path:line: message`."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.policy.loader import PolicyError, Problem, load_bytes, load_file
from supervisor.policy.schema import (
    AllOf,
    AnyOf,
    CheckpointPolicy,
    Detect,
    ExcludeTarget,
    Failback,
    Leaf,
    Limits,
    Per,
    Pool,
    Then,
)
from supervisor.policy.shipped import shipped_policy_dir
from supervisor.shared.vocab import Action, Severity, Signal

POLICIES = shipped_policy_dir()

# A minimal valid policy; line 7 holds the one condition, line 8 its action.
BASE = """\
version: 1
pools:
  ascend: {accelerator: ascend}
  nvidia: {accelerator: nvidia}
rules:
  - name: r
    when: {signal: crash, count: 3, within: 5m}
    then: {action: restart}
"""

SIGNALS = "crash, hang, interconnect_timeout, chip_error, chip_degraded, oom, network, node_lost, straggler, no_capacity, user_error"
LEAF_KEYS = "signal, pool, node, severity, count, within, per"
TOP_KEYS = "version, name, description, pools, preferred_pool, detect, checkpoint, rules, limits, failback"


def problems(text: str | bytes, path: str = "p.yaml") -> list[str]:
    """The problems load_bytes reports for `text`, as the operator reads them."""
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(PolicyError) as info:
        load_bytes(data, path)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


# --- the shipped policies ----------------------------------------------------------


def test_default_policy_loads_as_written() -> None:
    policy = load_file(POLICIES / "default.yaml")

    assert policy.name == "default"
    assert policy.version == 1
    assert policy.source == str(POLICIES / "default.yaml")
    assert len(policy.sha256) == 64
    assert policy.pools == {
        "ascend": Pool("ascend", "ascend", 1),
        "nvidia": Pool("nvidia", "nvidia", 1),
    }
    assert policy.preferred_pool == "ascend"
    assert [r.name for r in policy.rules] == [
        "user-error", "ascend-unstable", "bad-node", "chip-fault", "node-lost", "any-fault", "degraded",
        "ascend-no-capacity",
    ]
    assert [r.then.action for r in policy.rules] == [
        Action.STOP, Action.FAILOVER, Action.EXCLUDE, Action.RESTART, Action.RESTART, Action.RESTART, Action.ALERT,
        Action.FAILOVER,
    ]
    assert policy.limits == Limits(max_restarts=10, within=3600.0, failover_cooldown=3600.0)
    assert policy.failback == Failback(enabled=False, after=7200.0)
    assert policy.detect == Detect(15.0, 300.0, 1800.0, 1800.0, 5.0)
    assert policy.checkpoint == CheckpointPolicy(every=600.0, before_failover=True, before_failover_timeout=120.0, keep=3)

    unstable = policy.rules[1]
    assert unstable.then == Then(Action.FAILOVER, to="nvidia")
    assert isinstance(unstable.when, AnyOf)
    assert [(sorted(s.value for s in leaf.signals), leaf.count, leaf.within) for leaf in unstable.when.children] == [
        (["interconnect_timeout"], 3, 1800.0),
        (["chip_error"], 3, 3600.0),
        (["hang"], 2, 3600.0),
        (["node_lost"], 3, 3600.0),
    ]
    assert all(leaf.pools == frozenset({"ascend"}) for leaf in unstable.when.children)
    bad_node = policy.rules[2]
    assert bad_node.when == Leaf(frozenset({Signal.CHIP_ERROR}), count=2, within=3600.0, per=Per.NODE, line=bad_node.line + 1)
    assert bad_node.then.exclude is ExcludeTarget.NODE
    any_fault = policy.rules[5].when
    assert isinstance(any_fault, Leaf)
    assert any_fault.signals == {Signal.CRASH, Signal.HANG, Signal.INTERCONNECT_TIMEOUT, Signal.OOM, Signal.NETWORK}
    assert policy.rules[6].then.message == "a chip is degraded or a node is slow; check it before it fails"


def test_default_policy_rules_remember_their_lines() -> None:
    lines = (POLICIES / "default.yaml").read_text().splitlines()
    policy = load_file(POLICIES / "default.yaml")
    for rule in policy.rules:
        assert lines[rule.line - 1].strip() == f"- name: {rule.name}"


def test_patient_ascend_policy_loads_as_written() -> None:
    policy = load_file(POLICIES / "patient-ascend.yaml")

    assert policy.name == "patient-ascend"
    assert policy.pools == {
        "ascend": Pool("ascend", "ascend", 2),
        "nvidia": Pool("nvidia", "nvidia", 2),
    }
    assert policy.preferred_pool == "ascend"
    assert [r.name for r in policy.rules] == ["user-error", "ascend-unstable", "chip-fault", "out-of-memory", "any-fault",
                                                 "ascend-no-capacity"]
    assert policy.limits == Limits(max_restarts=20, within=7200.0, failover_cooldown=14_400.0)
    assert policy.failback == Failback(enabled=True, after=14_400.0)
    # Keys the file leaves out keep their defaults.
    assert policy.detect == Detect(heartbeat_timeout=30.0, hang_timeout=600.0, probe_interval=10.0)
    assert policy.checkpoint == CheckpointPolicy(every=1200.0, before_failover=True, before_failover_timeout=300.0, keep=5)

    unstable = policy.rules[1].when
    assert isinstance(unstable, AllOf)
    first, second = unstable.children
    assert isinstance(first, Leaf) and isinstance(second, Leaf)
    assert (first.signals, first.count, first.within) == ({Signal.INTERCONNECT_TIMEOUT}, 5, 3600.0)
    assert (second.signals, second.count, second.within) == ({Signal.CHIP_ERROR, Signal.HANG}, 2, 7200.0)
    chip_fault = policy.rules[2]
    assert chip_fault.when.min_severity is Severity.CRITICAL  # type: ignore[union-attr]
    assert chip_fault.then == Then(Action.EXCLUDE, exclude=ExcludeTarget.CHIP)
    assert policy.rules[3].then.action is Action.STOP


def test_sha256_is_of_the_file_bytes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "mine.yaml"
    path.write_text(BASE)
    policy = load_file(path)
    assert policy.sha256 == hashlib.sha256(BASE.encode()).hexdigest()
    assert policy.name == "mine"  # no name: key, so the file's stem
    assert policy.preferred_pool == "ascend"  # no preferred_pool: the first pool listed


# --- one problem at a time: exact message and line --------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(
            edit("within: 5m", "withn: 5m"),
            f"p.yaml:7: rule 'r' when: unknown key 'withn'; did you mean 'within'? allowed: {LEAF_KEYS}",
            id="typo-key",
        ),
        pytest.param(
            edit("within: 5m", "frobnicate: 5m"),
            f"p.yaml:7: rule 'r' when: unknown key 'frobnicate'; allowed: {LEAF_KEYS}",
            id="unknown-key-no-hint",
        ),
        pytest.param(
            edit("count: 3", "count: three"),
            "p.yaml:7: rule 'r' when count must be a whole number ≥ 1, got 'three'",
            id="count-not-a-number",
        ),
        pytest.param(
            edit("count: 3", "count: 2.5"),
            "p.yaml:7: rule 'r' when count must be a whole number ≥ 1, got 2.5",
            id="count-fraction",
        ),
        pytest.param(
            edit("count: 3", "count: 0"),
            "p.yaml:7: rule 'r' when count must be ≥ 1, got 0",
            id="count-zero",
        ),
        pytest.param(
            edit("within: 5m", "within: -5m"),
            "p.yaml:7: rule 'r' when within: a duration must be zero or positive, got '-5m'",
            id="negative-duration",
        ),
        pytest.param(
            edit("within: 5m", "within: -5"),
            "p.yaml:7: rule 'r' when within: a duration must be zero or positive, got -5",
            id="negative-seconds",
        ),
        pytest.param(
            edit("within: 5m", "within: 0s"),
            "p.yaml:7: rule 'r' when within must be longer than zero, got '0s'",
            id="zero-duration",
        ),
        pytest.param(
            edit("within: 5m", "within: 0"),
            "p.yaml:7: rule 'r' when within must be longer than zero, got 0",
            id="zero-seconds",
        ),
        pytest.param(
            edit("within: 5m", "within: soon"),
            "p.yaml:7: rule 'r' when within: expected a duration such as 500ms, 30s, 5m, 1h or 1h30m, got 'soon'",
            id="duration-shape",
        ),
        pytest.param(
            edit("signal: crash", "signal: crsh"),
            f"p.yaml:7: rule 'r' when signal: 'crsh' is not allowed; did you mean 'crash'? allowed: {SIGNALS}",
            id="unknown-signal",
        ),
        pytest.param(
            edit("signal: crash", "signal: [crash, hnag]"),
            f"p.yaml:7: rule 'r' when signal: 'hnag' is not allowed; did you mean 'hang'? allowed: {SIGNALS}",
            id="unknown-signal-in-list",
        ),
        pytest.param(
            edit("signal: crash", "signal: []"),
            "p.yaml:7: rule 'r' when signal must not be an empty list",
            id="empty-signal-list",
        ),
        pytest.param(
            edit("action: restart", "action: failover, to: amd"),
            "p.yaml:8: rule 'r' then to: pool 'amd' is not defined in pools; defined pools: ascend, nvidia",
            id="undefined-pool-in-to",
        ),
        pytest.param(
            edit("signal: crash,", "signal: crash, pool: amd,"),
            "p.yaml:7: rule 'r' when pool: pool 'amd' is not defined in pools; defined pools: ascend, nvidia",
            id="undefined-pool-in-condition",
        ),
        pytest.param(
            edit("version: 1\n", "version: 1\npreferred_pool: gpu\n"),
            "p.yaml:2: preferred_pool: pool 'gpu' is not defined in pools; defined pools: ascend, nvidia",
            id="undefined-preferred-pool",
        ),
        pytest.param(
            edit("version: 1\n", ""),
            "p.yaml:1: policy: missing required key 'version'",
            id="missing-version",
        ),
        pytest.param(
            "version: 1\nrules:\n  - name: r\n    when: {signal: crash}\n    then: {action: restart}\n",
            "p.yaml:1: policy: missing required key 'pools'",
            id="missing-pools",
        ),
        pytest.param(
            "version: 1\npools:\n  ascend: {accelerator: ascend}\n",
            "p.yaml:1: policy: missing required key 'rules'",
            id="missing-rules",
        ),
        pytest.param(
            edit("action: restart", "message: hello"),
            "p.yaml:8: rule 'r' then: missing required key 'action'",
            id="missing-action",
        ),
        pytest.param(
            edit("    when: {signal: crash, count: 3, within: 5m}\n", ""),
            "p.yaml:6: rule #1: missing required key 'when'",  # the name is not read yet
            id="missing-when",
        ),
        pytest.param(
            edit("  ascend: {accelerator: ascend}", "  ascend: {min_healthy_nodes: 2}"),
            "p.yaml:3: pool 'ascend': missing required key 'accelerator'",
            id="missing-accelerator",
        ),
        pytest.param(
            edit("count: 3,", "count: 3, count: 4,"),
            "p.yaml:7: rule 'r' when: duplicate key 'count' (YAML would silently keep only the last)",
            id="duplicate-key",
        ),
        pytest.param(
            BASE + "  - name: r\n    when: {signal: hang}\n    then: {action: restart}\n",
            "p.yaml:9: rule name 'r' is used twice; rule names must be unique",
            id="duplicate-rule-name",
        ),
        pytest.param(
            edit("  nvidia: {accelerator: nvidia}\n", "  nvidia: {accelerator: nvidia}\n  ascend: {accelerator: cpu}\n"),
            "p.yaml:5: pools: duplicate pool 'ascend'",
            id="duplicate-pool",
        ),
        pytest.param(
            edit("action: restart", "action: failover"),
            "p.yaml:8: rule 'r' then: a failover needs 'to: POOL'; defined pools: ascend, nvidia",
            id="failover-without-to",
        ),
        pytest.param(
            edit("action: restart", "action: restart, to: nvidia"),
            "p.yaml:8: rule 'r' then: 'to' only applies to action failover, not restart",
            id="to-on-restart",
        ),
        pytest.param(
            edit("action: restart", "action: alert, exclude: faulty_node"),
            "p.yaml:8: rule 'r' then: 'exclude' only applies to actions restart and exclude",
            id="exclude-on-alert",
        ),
        pytest.param(
            edit("action: restart", "action: failover, to: nvidia, exclude: faulty_node"),
            "p.yaml:8: rule 'r' then: 'exclude' only applies to actions restart and exclude",
            id="exclude-on-failover",
        ),
        pytest.param(
            edit("action: restart", "action: exclude, exclude: none"),
            "p.yaml:8: rule 'r' then: action exclude must exclude faulty_node or faulty_chip",
            id="exclude-nothing",
        ),
        pytest.param(
            edit("action: restart", "action: fail"),
            "p.yaml:8: rule 'r' then action: 'fail' is not allowed; did you mean 'failover'? "
            "allowed: restart, checkpoint, exclude, failover, stop, alert",
            id="fail-is-not-a-rule-action",
        ),
        pytest.param(
            edit("version: 1", "version: 2"),
            "p.yaml:1: version must be 1 (the policy format this trainguard reads), got 2",
            id="version-2",
        ),
        pytest.param(
            edit("version: 1\n", "version: 1\nname: 'my policy'\n"),
            "p.yaml:2: name 'my policy': use letters, digits, '.', '_' and '-', at most 63",
            id="bad-name",
        ),
    ],
)
def test_one_problem(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_empty_pools_and_rules() -> None:
    assert problems("version: 1\npools: {}\nrules: []\n") == [
        "p.yaml:2: pools must map pool names to {accelerator: ascend|nvidia|cpu}, got an empty mapping",
        "p.yaml:3: rules must hold at least one rule",
    ]


def test_any_and_all_side_by_side_is_refused() -> None:
    text = edit(
        "    when: {signal: crash, count: 3, within: 5m}\n",
        "    when:\n      any:\n        - {signal: crash}\n      all:\n        - {signal: hang}\n",
    )
    assert problems(text) == ["p.yaml:8: rule 'r' when: use either 'any' or 'all' here, not both (nest them instead)"]


def test_empty_file() -> None:
    assert problems("") == ["p.yaml:1: the file is empty; a policy needs at least version, pools and rules"]
    assert problems("# only a comment\n") == ["p.yaml:1: the file is empty; a policy needs at least version, pools and rules"]


def test_file_that_is_not_a_mapping() -> None:
    assert problems("- version: 1\n") == [f"p.yaml:1: policy must be a mapping of keys ({TOP_KEYS}), got a list"]


def test_invalid_yaml_reports_the_line_of_the_syntax_error() -> None:
    text = "version: 1\npools:\n  ascend: {accelerator: ascend\nrules: []\n"
    # The unclosed brace on line 3 is noticed where the parser trips: line 4.
    assert problems(text) == ["p.yaml:4: not valid YAML: expected ',' or '}', but got ':'"]


def test_invalid_yaml_indentation() -> None:
    text = "version: 1\npools:\n  ascend: {accelerator: ascend}\n bad: indent\n"
    (message,) = problems(text)
    assert message.startswith("p.yaml:4: not valid YAML: ")


def test_non_utf8_bytes() -> None:
    assert problems(b"version: 1\nname: \xff\n") == ["p.yaml:0: not UTF-8 text (invalid start byte at byte 17)"]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as info:
        load_file(missing)
    assert info.value.problems == [Problem(str(missing), 0, "cannot read: No such file or directory")]


def test_load_file_messages_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(edit("within: 5m", "withn: 5m"))
    with pytest.raises(PolicyError) as info:
        load_file(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:7: rule 'r' when: unknown key 'withn'; did you mean 'within'? allowed: {LEAF_KEYS}"
    ]


# --- several problems at once -----------------------------------------------------


def test_several_problems_each_reported_once_sorted_by_line() -> None:
    # The checker reads `limits` after `rules` and `rulez` last; the report is by line.
    text = """\
version: 1
limits:
  max_restarts: -1
pools:
  ascend: {accelerator: ascend}
  nvidia: {accelerator: nvida}
rules:
  - name: a
    when: {signal: crash, withn: 5m}
    then: {action: failover, to: nvidia}
  - name: b
    when: {signal: hang, count: 0}
    then: {action: stop, to: ascend}
rulez: []
failback: {enabled: yes, after: 0}
"""
    assert problems(text) == [
        "p.yaml:3: limits.max_restarts must be ≥ 0, got -1",
        "p.yaml:6: pool 'nvidia' accelerator: 'nvida' is not allowed; did you mean 'nvidia'? allowed: ascend, nvidia, cpu",
        f"p.yaml:9: rule 'a' when: unknown key 'withn'; did you mean 'within'? allowed: {LEAF_KEYS}",
        "p.yaml:12: rule 'b' when count must be ≥ 1, got 0",
        "p.yaml:13: rule 'b' then: 'to' only applies to action failover, not stop",
        f"p.yaml:14: policy: unknown key 'rulez'; did you mean 'rules'? allowed: {TOP_KEYS}",
        "p.yaml:15: failback.after must be longer than zero, got 0",
    ]


def test_problems_are_objects_with_path_line_and_message() -> None:
    with pytest.raises(PolicyError) as info:
        load_bytes(edit("count: 3", "count: three").encode(), "dir/x.yaml")
    assert info.value.problems == [Problem("dir/x.yaml", 7, "rule 'r' when count must be a whole number ≥ 1, got 'three'")]


def test_reference_to_a_broken_pool_is_reported_once_at_its_definition() -> None:
    text = """\
version: 1
pools:
  ascend: {accelerator: ascnd}
  nvidia: {accelerator: nvidia}
preferred_pool: ascend
rules:
  - name: r
    when: {signal: crash, pool: ascend}
    then: {action: failover, to: ascend}
"""
    assert problems(text) == [
        "p.yaml:3: pool 'ascend' accelerator: 'ascnd' is not allowed; did you mean 'ascend'? allowed: ascend, nvidia, cpu",
    ]


def test_reference_to_an_undeclared_pool_next_to_a_broken_one() -> None:
    text = """\
version: 1
pools:
  ascend: {accelerator: ascend, min_healthy_nodes: 0}
rules:
  - name: r
    when: {signal: crash, pool: [ascend, gpu]}
    then: {action: restart}
"""
    assert problems(text) == [
        "p.yaml:3: pool 'ascend' min_healthy_nodes must be ≥ 1, got 0",
        "p.yaml:6: rule 'r' when pool: pool 'gpu' is not defined in pools; defined pools: ascend",
    ]


def test_every_broken_rule_is_reported_not_only_the_first() -> None:
    text = BASE + """\
  - name: s
    when: {signal: hang, count: many}
    then: {action: restart}
  - when: {signal: oom}
    then: {action: sotp}
"""
    assert problems(text) == [
        "p.yaml:10: rule 's' when count must be a whole number ≥ 1, got 'many'",
        "p.yaml:12: rule #3: missing required key 'name'",
        "p.yaml:13: rule #3 then action: 'sotp' is not allowed; did you mean 'stop'? "
        "allowed: restart, checkpoint, exclude, failover, stop, alert",
    ]


# --- shapes that load -------------------------------------------------------------


def test_nested_any_and_all_load_into_anyof_and_allof() -> None:
    text = """\
version: 1
pools:
  ascend: {accelerator: ascend}
  nvidia: {accelerator: nvidia, min_healthy_nodes: 2}
preferred_pool: nvidia
rules:
  - name: nested
    when:
      any:
        - {signal: interconnect_timeout, pool: ascend, count: 5, within: 1h}
        - all:
            - {signal: [chip_error, hang], pool: [ascend, nvidia], count: 2, within: 2h}
            - {signal: crash, node: "rack3-*", severity: critical, per: node}
            - {signal: oom, node: ["a*", "b?"], per: chip, within: 90s}
    then: {action: exclude, exclude: faulty_chip}
"""
    policy = load_bytes(text.encode(), "p.yaml")
    assert policy.preferred_pool == "nvidia"
    assert policy.pools["nvidia"] == Pool("nvidia", "nvidia", 2)
    (rule,) = policy.rules
    assert rule.line == 7
    assert rule.then == Then(Action.EXCLUDE, exclude=ExcludeTarget.CHIP)
    assert rule.when == AnyOf(
        (
            Leaf(frozenset({Signal.INTERCONNECT_TIMEOUT}), pools=frozenset({"ascend"}), count=5, within=3600.0, line=10),
            AllOf(
                (
                    Leaf(frozenset({Signal.CHIP_ERROR, Signal.HANG}), pools=frozenset({"ascend", "nvidia"}),
                         count=2, within=7200.0, line=12),
                    Leaf(frozenset({Signal.CRASH}), nodes=("rack3-*",), min_severity=Severity.CRITICAL,
                         per=Per.NODE, line=13),
                    Leaf(frozenset({Signal.OOM}), nodes=("a*", "b?"), per=Per.CHIP, within=90.0, line=14),
                ),
                line=11,
            ),
        ),
        line=9,
    )


def test_leaf_defaults() -> None:
    policy = load_bytes(BASE.replace("{signal: crash, count: 3, within: 5m}", "{signal: crash}").encode(), "p.yaml")
    assert policy.rules[0].when == Leaf(frozenset({Signal.CRASH}), line=7)
    leaf = policy.rules[0].when
    assert (leaf.pools, leaf.nodes, leaf.min_severity, leaf.count, leaf.within, leaf.per) == (  # type: ignore[union-attr]
        None, None, None, 1, None, Per.JOB,
    )


def test_signal_as_a_list() -> None:
    policy = load_bytes(edit("signal: crash", "signal: [crash, oom, network]").encode(), "p.yaml")
    assert policy.rules[0].when.signals == {Signal.CRASH, Signal.OOM, Signal.NETWORK}  # type: ignore[union-attr]


@pytest.mark.parametrize("per", ["job", "node", "chip"])
def test_per(per: str) -> None:
    policy = load_bytes(edit("within: 5m", f"within: 5m, per: {per}").encode(), "p.yaml")
    assert policy.rules[0].when.per is Per(per)  # type: ignore[union-attr]


def test_per_rejects_other_words() -> None:
    assert problems(edit("within: 5m", "within: 5m, per: rack")) == [
        "p.yaml:7: rule 'r' when per: 'rack' is not allowed; allowed: job, node, chip",
    ]


@pytest.mark.parametrize("severity", ["warning", "error", "critical"])
def test_severity(severity: str) -> None:
    policy = load_bytes(edit("within: 5m", f"within: 5m, severity: {severity}").encode(), "p.yaml")
    assert policy.rules[0].when.min_severity is Severity(severity)  # type: ignore[union-attr]


def test_severity_rejects_other_words() -> None:
    assert problems(edit("within: 5m", "within: 5m, severity: fatal")) == [
        "p.yaml:7: rule 'r' when severity: 'fatal' is not allowed; allowed: warning, error, critical",
    ]


def test_checkpoint_every_off() -> None:
    policy = load_bytes((BASE + "checkpoint: {every: off, keep: 1}\n").encode(), "p.yaml")
    assert policy.checkpoint == CheckpointPolicy(every=None, keep=1)


def test_checkpoint_every_duration() -> None:
    policy = load_bytes((BASE + "checkpoint: {every: 1h30m}\n").encode(), "p.yaml")
    assert policy.checkpoint.every == 5400.0


def test_checkpoint_every_rejects_a_word() -> None:
    assert problems(BASE + "checkpoint: {every: never}\n") == [
        "p.yaml:9: checkpoint.every: expected a duration such as 500ms, 30s, 5m, 1h or 1h30m, got 'never'",
    ]


def test_failover_cooldown_may_be_zero_but_other_durations_may_not() -> None:
    policy = load_bytes((BASE + "limits: {failover_cooldown: 0, max_restarts: 0}\n").encode(), "p.yaml")
    assert policy.limits == Limits(max_restarts=0, within=3600.0, failover_cooldown=0.0)
    assert problems(BASE + "limits: {within: 0}\n") == ["p.yaml:9: limits.within must be longer than zero, got 0"]


def test_then_keeps_exclude_and_message() -> None:
    policy = load_bytes(edit("action: restart", "action: restart, exclude: faulty_chip, message: 'a chip'").encode(), "p.yaml")
    assert policy.rules[0].then == Then(Action.RESTART, exclude=ExcludeTarget.CHIP, message="a chip")
    policy = load_bytes(edit("action: restart", "action: exclude").encode(), "p.yaml")
    assert policy.rules[0].then == Then(Action.EXCLUDE, exclude=ExcludeTarget.NODE)  # exclude's default


def test_failback_section_loads() -> None:
    policy = load_bytes((BASE + "failback: {enabled: true, after: 30m}\n").encode(), "p.yaml")
    assert policy.failback == Failback(enabled=True, after=1800.0)


# --- bugs -------------------------------------------------------------------------


def test_unknown_yaml_tag_is_a_problem_not_a_crash() -> None:
    (message,) = problems(edit("count: 3", "count: !three 3"))
    assert message.startswith("p.yaml:7: ")


def test_bad_explicit_int_tag_is_a_problem_not_a_crash() -> None:
    (message,) = problems(edit("count: 3", "count: !!int abc"))
    assert message.startswith("p.yaml:7: ")


def test_version_true_is_refused() -> None:
    assert problems(edit("version: 1", "version: true")) == [
        "p.yaml:1: version must be 1 (the policy format this trainguard reads), got True",
    ]


def test_checkpoint_every_zero_is_refused_like_other_zero_durations() -> None:
    assert problems(BASE + "checkpoint: {every: 0}\n") == [
        "p.yaml:9: checkpoint.every must be longer than zero, got 0",
    ]


def _live_yaml_nodes() -> int:
    import gc

    import yaml

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, yaml.Node))


def test_loading_again_and_again_keeps_no_yaml_nodes_alive() -> None:
    # The daemon reloads a policy on every save; memory must not grow with each load.
    load_file(POLICIES / "default.yaml")
    before = _live_yaml_nodes()
    for _ in range(20):
        load_file(POLICIES / "default.yaml")
    assert _live_yaml_nodes() - before < 20
