"""YAML → `Policy`, or every problem as `path:line: what is wrong and what is allowed`.

The file is composed into YAML nodes (which know their line numbers) and checked node by
node, collecting all problems instead of stopping at the first: an operator fixing a
policy at 3 a.m. should see everything wrong in one run. Unknown keys are errors, with a
suggestion when one is close (`withn` → `within`): a typo must never silently disable a
rule. Duplicate keys are errors too (YAML would quietly keep the last one).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from supervisor.policy.schema import (
    POLICY_VERSION,
    AllOf,
    AnyOf,
    CheckpointPolicy,
    Condition,
    Detect,
    ExcludeTarget,
    Failback,
    Leaf,
    Limits,
    Per,
    Policy,
    Pool,
    Rule,
    Then,
)
from supervisor.shared.safefile import POLICY_LIMIT, FileRefused, read_bounded
from supervisor.shared.vocab import Accelerator, Action, Severity, Signal
from supervisor.shared.yamlcheck import Checker, Problem, YamlProblems, compose
from supervisor.shared.yamlcheck import kind as _kind
from supervisor.shared.yamlcheck import show as _show

T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_ACCELERATORS = Accelerator.families()
_EXCLUDE_WORDS = {
    "none": ExcludeTarget.NONE,
    "faulty_node": ExcludeTarget.NODE,
    "faulty_chip": ExcludeTarget.CHIP,
}


class PolicyError(YamlProblems):
    """A policy file that cannot be used; `problems` lists every reason."""


__all__ = ["PolicyError", "Problem", "load_bytes", "load_file"]


def load_file(path: str | Path) -> Policy:
    path = Path(path)
    try:
        data = read_bounded(path, POLICY_LIMIT, "a policy file")
    except FileRefused as exc:
        raise PolicyError([Problem(str(path), 0, exc.reason)]) from None
    except OSError as exc:
        raise PolicyError([Problem(str(path), 0, f"cannot read: {exc.strerror or exc}")]) from None
    return load_bytes(data, str(path), default_name=path.stem)


def load_bytes(data: bytes, path: str, default_name: str = "policy") -> Policy:
    try:
        root = compose(data, path, "a policy needs at least version, pools and rules")
    except YamlProblems as exc:
        raise PolicyError(exc.problems) from None
    checker = _Checker(path)
    policy = checker.policy(root, default_name)
    if checker.problems or policy is None:
        raise PolicyError(checker.sorted_problems())
    return Policy(**{**policy.__dict__, "source": path, "sha256": hashlib.sha256(data).hexdigest()})


class _Checker(Checker):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        # Every pool name the file declares, valid or not: a reference to a pool whose
        # definition has its own error is not a second problem.
        self.declared_pools: list[str] = []

    # --- the policy ----------------------------------------------------------------

    def policy(self, root: yaml.Node, default_name: str) -> Policy | None:
        top = self.mapping(
            root,
            "policy",
            ("version", "name", "description", "pools", "preferred_pool", "detect", "checkpoint", "rules", "limits", "failback"),
            required=("version", "pools", "rules"),
        )
        if top is None:
            return None
        if "version" in top:
            version = self.scalar(top["version"])
            if isinstance(version, bool) or version != POLICY_VERSION:
                self.error(top["version"], f"version must be {POLICY_VERSION} (the policy format this trainguard reads), got {_show(version)}")
        name = default_name
        if "name" in top:
            given = self.str_(top["name"], "name")
            if given is not None and not _NAME.match(given):
                self.error(top["name"], f"name {given!r}: use letters, digits, '.', '_' and '-', at most 63")
            name = given or name
        description = (self.str_(top["description"], "description") or "") if "description" in top else ""
        pools = self.pools(top["pools"]) if "pools" in top else {}
        preferred = None
        if "preferred_pool" in top:
            preferred = self.pool_ref(top["preferred_pool"], "preferred_pool", pools)
        elif pools:
            preferred = next(iter(pools))
        rules = self.rules(top["rules"], pools) if "rules" in top else ()
        detect = self.section(top, "detect", Detect, {
            "heartbeat_timeout": self.duration, "hang_timeout": self.duration,
            "checkpoint_hang_timeout": self.duration, "eval_hang_timeout": self.duration,
            "probe_interval": self.duration,
        })
        checkpoint = self.checkpoint(top["checkpoint"]) if "checkpoint" in top else CheckpointPolicy()
        limits = self.section(top, "limits", Limits, {
            "max_restarts": lambda n, w: self.int_(n, w, 0),
            "within": self.duration,
            "failover_cooldown": lambda n, w: self.duration(n, w, positive=False),
        })
        failback = self.section(top, "failback", Failback, {"enabled": self.bool_, "after": self.duration})
        if failback is not None and failback.enabled and preferred is None:
            self.error(top["failback"], "failback needs a preferred_pool to fail back to")
        if self.problems or preferred is None or rules is None or detect is None or limits is None or failback is None or checkpoint is None:
            return None
        return Policy(
            name=name, description=description, pools=pools, preferred_pool=preferred, rules=rules,
            detect=detect, checkpoint=checkpoint, limits=limits, failback=failback,
        )

    def section(self, top: dict[str, yaml.Node], key: str, cls: type[T], fields: dict[str, Callable[[yaml.Node, str], Any]]) -> T | None:
        if key not in top:
            return cls()
        values = self.mapping(top[key], key, tuple(fields))
        if values is None:
            return None
        parsed = {k: fields[k](v, f"{key}.{k}") for k, v in values.items()}
        if any(v is None for v in parsed.values()):
            return None
        return cls(**parsed)

    def checkpoint(self, node: yaml.Node) -> CheckpointPolicy | None:
        values = self.mapping(node, "checkpoint", ("every", "before_failover", "before_failover_timeout", "keep"))
        if values is None:
            return None
        out: dict[str, Any] = {}
        ok = True
        for key, value in values.items():
            where = f"checkpoint.{key}"
            if key == "every":
                raw = self.scalar(value)
                off = raw is None or raw is False or raw == "off"
                parsed: Any = None if off else self.duration(value, where)
                ok &= parsed is not None or off
            elif key == "before_failover":
                parsed = self.bool_(value, where)
                ok &= parsed is not None
            elif key == "before_failover_timeout":
                parsed = self.duration(value, where)
                ok &= parsed is not None
            else:
                parsed = self.int_(value, where, 1)
                ok &= parsed is not None
            out[key] = parsed
        return CheckpointPolicy(**out) if ok else None

    def pools(self, node: yaml.Node) -> dict[str, Pool]:
        if not isinstance(node, yaml.MappingNode) or not node.value:
            got = "an empty mapping" if isinstance(node, yaml.MappingNode) else _kind(node)
            self.error(node, f"pools must map pool names to {{accelerator: ascend|nvidia|cpu}}, got {got}")
            return {}
        pools: dict[str, Pool] = {}
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else ""
            if not _NAME.match(str(name)):
                self.error(key_node, f"pool name {name!r}: use letters, digits, '.', '_' and '-'")
                continue
            if name in self.declared_pools:
                self.error(key_node, f"pools: duplicate pool {name!r}")
                continue
            self.declared_pools.append(name)
            values = self.mapping(value_node, f"pool {name!r}", ("accelerator", "min_healthy_nodes"), required=("accelerator",))
            if values is None or "accelerator" not in values:
                continue
            accelerator = self.choice(values["accelerator"], f"pool {name!r} accelerator", {a: a for a in _ACCELERATORS})
            minimum = self.int_(values["min_healthy_nodes"], f"pool {name!r} min_healthy_nodes", 1) if "min_healthy_nodes" in values else 1
            if accelerator is not None and minimum is not None:
                pools[name] = Pool(name, accelerator, minimum)
        return pools

    def pool_ref(self, node: yaml.Node, where: str, pools: dict[str, Pool]) -> str | None:
        value = self.scalar(node)
        if isinstance(value, str) and value in pools:
            return value
        if isinstance(value, str) and value in self.declared_pools:
            return None  # its definition is already reported
        defined = ", ".join(self.declared_pools) or "none"
        self.error(node, f"{where}: pool {_show(value)} is not defined in pools; defined pools: {defined}")
        return None

    def rules(self, node: yaml.Node, pools: dict[str, Pool]) -> tuple[Rule, ...] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"rules must be a list of rules (name, when, then), got {_kind(node)}")
            return None
        if not node.value:
            self.error(node, "rules must hold at least one rule")
            return None
        rules: list[Rule] = []
        names: set[str] = set()
        ok = True
        for index, rule_node in enumerate(node.value):
            rule = self.rule(rule_node, index, pools)
            if rule is None:
                ok = False
                continue
            if rule.name in names:
                self.error(rule_node, f"rule name {rule.name!r} is used twice; rule names must be unique")
                ok = False
            names.add(rule.name)
            rules.append(rule)
        return tuple(rules) if ok else None

    def rule(self, node: yaml.Node, index: int, pools: dict[str, Pool]) -> Rule | None:
        values = self.mapping(node, f"rule #{index + 1}", ("name", "when", "then"), required=("name", "when", "then"))
        if values is None:
            return None
        name = self.str_(values["name"], f"rule #{index + 1} name") if "name" in values else None
        where = f"rule {name!r}" if name else f"rule #{index + 1}"
        when = self.condition(values["when"], f"{where} when", pools) if "when" in values else None
        then = self.then(values["then"], f"{where} then", pools) if "then" in values else None
        if name is None or when is None or then is None:
            return None
        return Rule(name=name, when=when, then=then, line=node.start_mark.line + 1)

    def condition(self, node: yaml.Node, where: str, pools: dict[str, Pool]) -> Condition | None:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode) and any(
            isinstance(k, yaml.ScalarNode) and k.value in ("any", "all") for k, _ in node.value
        ):
            values = self.mapping(node, where, ("any", "all"))
            if values is None:
                return None
            if len(values) != 1:
                self.error(node, f"{where}: use either 'any' or 'all' here, not both (nest them instead)")
                return None
            (kind, children_node), = values.items()
            if not isinstance(children_node, yaml.SequenceNode) or not children_node.value:
                self.error(children_node, f"{where}.{kind} must be a non-empty list of conditions")
                return None
            children = [self.condition(c, f"{where}.{kind}[{i}]", pools) for i, c in enumerate(children_node.value)]
            if any(c is None for c in children):
                return None
            return (AnyOf if kind == "any" else AllOf)(tuple(children), line)  # type: ignore[arg-type]
        return self.leaf(node, where, pools)

    def leaf(self, node: yaml.Node, where: str, pools: dict[str, Pool]) -> Leaf | None:
        values = self.mapping(
            node, where, ("signal", "pool", "node", "severity", "count", "within", "per"), required=("signal",)
        )
        if values is None or "signal" not in values:
            return None
        signal_names = {s.value: s for s in Signal}
        signals = self.one_or_list(values["signal"], f"{where} signal", lambda n, w: self.choice(n, w, signal_names))
        pool_names = (
            self.one_or_list(values["pool"], f"{where} pool", lambda n, w: self.pool_ref(n, w, pools))
            if "pool" in values else []
        )
        nodes = self.one_or_list(values["node"], f"{where} node", self.str_) if "node" in values else []
        severity = (
            self.choice(values["severity"], f"{where} severity", {s.value: s for s in Severity})
            if "severity" in values else None
        )
        count = self.int_(values["count"], f"{where} count", 1) if "count" in values else 1
        within = self.duration(values["within"], f"{where} within") if "within" in values else None
        per = self.choice(values["per"], f"{where} per", {p.value: p for p in Per}) if "per" in values else Per.JOB
        broken = (
            signals is None or pool_names is None or nodes is None or count is None or per is None
            or ("within" in values and within is None) or ("severity" in values and severity is None)
        )
        if broken:
            return None
        return Leaf(
            signals=frozenset(signals),  # type: ignore[arg-type]
            pools=frozenset(pool_names) if pool_names else None,
            nodes=tuple(nodes) if nodes else None,
            min_severity=severity,
            count=count,  # type: ignore[arg-type]
            within=within,
            per=per,  # type: ignore[arg-type]
            line=node.start_mark.line + 1,
        )

    def then(self, node: yaml.Node, where: str, pools: dict[str, Pool]) -> Then | None:
        values = self.mapping(node, where, ("action", "to", "exclude", "message"), required=("action",))
        if values is None or "action" not in values:
            return None
        actions = {a.value: a for a in Action if a not in (Action.NONE, Action.FAIL)}
        action = self.choice(values["action"], f"{where} action", actions)
        if action is None:
            return None
        to = None
        if action is Action.FAILOVER:
            if "to" not in values:
                self.error(node, f"{where}: a failover needs 'to: POOL'; defined pools: {', '.join(pools) or 'none'}")
                return None
            to = self.pool_ref(values["to"], f"{where} to", pools)
            if to is None:
                return None
        elif "to" in values:
            self.error(values["to"], f"{where}: 'to' only applies to action failover, not {action.value}")
            return None
        exclude = ExcludeTarget.NODE if action is Action.EXCLUDE else ExcludeTarget.NONE
        if "exclude" in values:
            if action not in (Action.RESTART, Action.EXCLUDE):
                self.error(values["exclude"], f"{where}: 'exclude' only applies to actions restart and exclude")
                return None
            chosen = self.choice(values["exclude"], f"{where} exclude", _EXCLUDE_WORDS)
            if chosen is None:
                return None
            if action is Action.EXCLUDE and chosen is ExcludeTarget.NONE:
                self.error(values["exclude"], f"{where}: action exclude must exclude faulty_node or faulty_chip")
                return None
            exclude = chosen
        message = self.str_(values["message"], f"{where} message") if "message" in values else None
        if "message" in values and message is None:
            return None
        return Then(action=action, to=to, exclude=exclude, message=message)
