"""agents.watchers.logscan: the fault-pattern catalog and the log scanner (pure)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.watchers.logscan import (
    EXCEPTION_PATTERN,
    MAX_EVIDENCE_BYTES,
    MAX_TRACEBACK_LINES,
    TRACEBACK_PATTERN,
    CatalogError,
    Finding,
    LogScanner,
    default_catalog_path,
    fingerprint,
    load_catalog,
    load_catalog_bytes,
    most_specific,
    scan_lines,
    specificity,
    split_prefix,
)
from supervisor.shared.vocab import Severity, Signal

SHIPPED = default_catalog_path()
CATALOG = load_catalog(SHIPPED)
BY_NAME = {p.name: p for p in CATALOG.patterns}
HEADER = "Traceback (most recent call last):"


def example(name: str) -> str:
    return BY_NAME[name].example


def size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def unrecognised(line: int, evidence: str, lines: int) -> Finding:
    """An unrecognised traceback: a crash (restarted), never a user_error by itself."""
    return Finding(line, Signal.CRASH, TRACEBACK_PATTERN, Severity.ERROR, evidence, lines)


# --- the shipped catalog -----------------------------------------------------------


def test_the_shipped_catalog_loads_and_is_the_default() -> None:
    assert default_catalog_path() == SHIPPED
    default = load_catalog()
    assert default.source == str(SHIPPED)
    assert len(default.sha256) == 64
    assert default.patterns == CATALOG.patterns
    assert len(CATALOG.patterns) >= 40
    assert len(BY_NAME) == len(CATALOG.patterns)
    text = SHIPPED.read_text().splitlines()
    # Each entry knows where it starts in the file, for messages that point an operator there.
    assert all(text[p.line - 1].strip() == f"- name: {p.name}" for p in CATALOG.patterns)


@pytest.mark.parametrize("pattern", CATALOG.patterns, ids=lambda p: p.name)
def test_every_example_is_decided_by_its_own_entry(pattern) -> None:
    # Proves the catalog's order shadows no entry: an earlier, broader regex would win here.
    assert CATALOG.match(pattern.example) is pattern
    assert size(pattern.example) <= MAX_EVIDENCE_BYTES
    assert scan_lines([pattern.example], CATALOG) == [
        Finding(1, pattern.signal, pattern.name, pattern.severity, pattern.example, 1)
    ]


@pytest.mark.parametrize("pattern", CATALOG.patterns, ids=lambda p: p.name)
def test_every_example_as_a_tracebacks_exception_gives_the_traceback_its_signal(pattern) -> None:
    prefix, _ = split_prefix(pattern.example)
    lead = f"{prefix} " if prefix else ""
    log = [
        "step 7 loss 2.1",
        f"{lead}{HEADER}",
        f'{lead}  File "/work/train.py", line 12, in <module>',
        f"{lead}    train(model)",
        pattern.example,
        "step 8 loss 2.0",
    ]
    [finding] = scan_lines(log, CATALOG)
    assert (finding.line, finding.lines, finding.signal, finding.pattern) == (2, 4, pattern.signal, pattern.name)


ORDINARY = [
    "loss=0.5 step=100",
    "step 100 | loss 2.3412 | lr 3.0e-04 | grad_norm 1.02 | tokens/s 12345 | mem 23.1GiB",
    "Epoch 1/10: 100%|##########| 500/500 [01:23<00:00,  6.00it/s, loss=0.123]",
    "[rank0]: step=100 loss=0.5",
    "INFO:root:Saving checkpoint to /ckpt/step_100 (error=0, timeout=1800s)",
    "W0626 06:24:44.903881 12345 torch/distributed/run.py:779] Setting OMP_NUM_THREADS environment variable for each process to be 1",
    "host:123:456 [0] NCCL INFO comm 0x55 rank 0 nranks 8 cudaDev 0 busId 1000 - Init COMPLETE",
    "[rank1]:[W626 06:24:44.9 ProcessGroupNCCL.cpp:1168] Warning: process group has NOT been destroyed before we destruct ProcessGroupNCCL.",
    "max memory allocated: 12.3 GiB; torch.cuda.OutOfMemoryError handler installed",
    "HCCL_CONNECT_TIMEOUT=1200 NCCL_DEBUG=INFO NCCL_TIMEOUT=600",
    "",
]


def test_ordinary_training_output_is_no_finding() -> None:
    assert scan_lines(ORDINARY, CATALOG) == []


# --- tracebacks --------------------------------------------------------------------

PLAIN = [
    "step 1 loss 0.5",
    HEADER,
    '  File "/work/train.py", line 42, in <module>',
    "    main()",
    '  File "/work/train.py", line 30, in main',
    '    raise ValueError("batch_size must be positive, got 0")',
    "ValueError: batch_size must be positive, got 0",
    "step 2 loss 0.4",
]


def test_an_unrecognised_traceback_is_one_crash_finding_that_says_so() -> None:
    expected = unrecognised(2, f"{HEADER}\nValueError: batch_size must be positive, got 0", 6)
    assert scan_lines(PLAIN, CATALOG) == [expected]


def test_a_traceback_is_reported_at_the_first_line_after_it() -> None:
    scanner = LogScanner(CATALOG)
    got = [scanner.feed(line) for line in PLAIN]
    # Only the next line shows that no chained traceback follows the exception.
    assert got == [[]] * 7 + [[unrecognised(2, f"{HEADER}\nValueError: batch_size must be positive, got 0", 6)]]
    assert scanner.flush() == []


def test_a_traceback_at_end_of_stream_is_reported_by_flush() -> None:
    scanner = LogScanner(CATALOG)
    assert [f for line in PLAIN[:7] for f in scanner.feed(line + "\r\n")] == []
    assert scanner.flush() == [unrecognised(2, f"{HEADER}\nValueError: batch_size must be positive, got 0", 6)]
    assert scanner.flush() == []


def test_a_traceback_cut_short_by_end_of_stream_is_still_a_finding() -> None:
    scanner = LogScanner(CATALOG)
    for line in PLAIN[:5]:
        assert scanner.feed(line) == []
    assert scanner.flush() == [unrecognised(2, f'{HEADER}\n  File "/work/train.py", line 30, in main', 4)]


@pytest.mark.parametrize("exception", [
    example("cuda-out-of-memory"),
    example("cuda-out-of-memory").replace("torch.cuda.OutOfMemoryError", "torch.OutOfMemoryError"),
])
def test_a_traceback_ending_in_cuda_oom_is_oom(exception: str) -> None:
    log = [
        HEADER,
        '  File "/work/train.py", line 88, in <module>',
        "    loss = model(batch).sum()",
        '  File "/usr/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1751, in _call_impl',
        "    return forward_call(*args, **kwargs)",
        exception,
    ]
    oom = BY_NAME["cuda-out-of-memory"]
    assert scan_lines(log, CATALOG) == [Finding(1, Signal.OOM, oom.name, oom.severity, f"{HEADER}\n{exception}", 6)]


def test_a_traceback_with_an_nccl_watchdog_timeout_is_an_interconnect_timeout() -> None:
    # The watchdog's message is the first exception of a chain; the last one is generic.
    watchdog = (
        "torch.distributed.DistBackendError: [Rank 1] Watchdog caught collective operation timeout: "
        "WorkNCCL(SeqNum=808, OpType=ALLREDUCE, NumelIn=9801523, NumelOut=9801523, Timeout(ms)=600000) "
        "ran for 600020 milliseconds before timing out."
    )
    log = [
        "[rank1]: Traceback (most recent call last):",
        '[rank1]:   File "/work/train.py", line 61, in <module>',
        "[rank1]:     dist.all_reduce(loss)",
        f"[rank1]: {watchdog}",
        "[rank1]: ",
        "[rank1]: The above exception was the direct cause of the following exception:",
        "[rank1]: ",
        "[rank1]: Traceback (most recent call last):",
        '[rank1]:   File "/work/train.py", line 64, in <module>',
        '[rank1]:     raise RuntimeError("training step failed")',
        "[rank1]: RuntimeError: training step failed",
    ]
    pattern = BY_NAME["nccl-watchdog-collective-timeout"]
    assert scan_lines(log, CATALOG) == [Finding(
        1, Signal.INTERCONNECT_TIMEOUT, pattern.name, pattern.severity,
        f"{log[0]}\n{log[3]}\n{log[-1]}", 11,
    )]


def test_catalog_order_decides_between_lines_of_one_traceback() -> None:
    # An EI0002 line (earlier in the catalog) beats the generic HCCL wrapper line that
    # comes first in the traceback.
    log = [
        HEADER,
        '  File "/work/train.py", line 5, in <module>',
        example("hccl-error-in-processgrouphccl"),
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        HEADER,
        '  File "/work/train.py", line 9, in <module>',
        example("hccl-ei0002-notify-wait-timeout"),
    ]
    ei0002 = BY_NAME["hccl-ei0002-notify-wait-timeout"]
    assert scan_lines(log, CATALOG) == [
        Finding(1, ei0002.signal, ei0002.name, ei0002.severity, f"{HEADER}\n{ei0002.example}", 9)
    ]


@pytest.mark.parametrize("chain", [
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
])
def test_chained_tracebacks_are_one_finding(chain: str) -> None:
    log = [
        "step 3 loss 1.0",
        HEADER,
        '  File "/work/data.py", line 10, in load',
        "    return shards[index]",
        "KeyError: 17",
        "",
        chain,
        "",
        HEADER,
        '  File "/work/train.py", line 20, in <module>',
        '    raise RuntimeError("could not load shard 17")',
        "RuntimeError: could not load shard 17",
        "",
        "step 4 loss 0.9",
    ]
    assert scan_lines(log, CATALOG) == [unrecognised(2, f"{HEADER}\nRuntimeError: could not load shard 17", 11)]


def test_two_tracebacks_back_to_back_are_two_findings() -> None:
    log = [HEADER, '  File "a.py", line 1, in <module>', "KeyError: 'a'",
           HEADER, '  File "b.py", line 2, in <module>', "ValueError: b"]
    assert scan_lines(log, CATALOG) == [
        unrecognised(1, f"{HEADER}\nKeyError: 'a'", 3),
        unrecognised(4, f"{HEADER}\nValueError: b", 3),
    ]


def test_interleaved_ranks_keep_their_tracebacks_apart() -> None:
    oom = example("cuda-out-of-memory")
    log = [
        "[rank0]: Traceback (most recent call last):",                     # 1
        "[rank1]: Traceback (most recent call last):",                     # 2
        '[rank0]:   File "/work/train.py", line 30, in <module>',          # 3
        '[rank1]:   File "/work/train.py", line 30, in <module>',          # 4
        "[rank1]:     loss = model(batch)",                                # 5
        "[rank0]:     check(batch)",                                       # 6
        f"[rank1]: {oom}",                                                 # 7
        "[rank0]: ValueError: empty batch",                                # 8
        "[rank0]:[W626 06:24:44.9 ProcessGroupNCCL.cpp:1168] Warning: process group has NOT been destroyed",  # 9
    ]
    pattern = BY_NAME["cuda-out-of-memory"]
    assert scan_lines(log, CATALOG) == [
        unrecognised(1, f"{log[0]}\n{log[7]}", 8),
        Finding(2, Signal.OOM, pattern.name, pattern.severity, f"{log[1]}\n{log[6]}", 6),
    ]


def test_a_line_of_another_stream_inside_a_traceback_is_scanned_on_its_own() -> None:
    gloo = example("gloo-timeout")
    log = [HEADER, '  File "/work/train.py", line 3, in <module>', f"[rank2]: {gloo}", "ValueError: x"]
    pattern = BY_NAME["gloo-timeout"]
    assert scan_lines(log, CATALOG) == [
        unrecognised(1, f"{HEADER}\nValueError: x", 4),
        Finding(3, Signal.INTERCONNECT_TIMEOUT, pattern.name, pattern.severity, f"[rank2]: {gloo}", 1),
    ]


def test_a_huge_traceback_is_cut_off_and_classified() -> None:
    frames = ['  File "/work/recurse.py", line 4, in walk', "    return walk(node.child)"] * 5_000
    log = [HEADER, *frames, "RecursionError: maximum recursion depth exceeded", example("gloo-timeout")]
    scanner = LogScanner(CATALOG)
    got = [(number, f) for number, line in enumerate(log, 1) for f in scanner.feed(line)]
    got += [(None, f) for f in scanner.flush()]
    gloo = BY_NAME["gloo-timeout"]
    assert got == [
        # Reported as soon as it reaches the limit; the rest of it is scanned line by line,
        # so a fault printed later is still seen.
        (MAX_TRACEBACK_LINES, unrecognised(1, f"{HEADER}\n{frames[MAX_TRACEBACK_LINES - 2]}", MAX_TRACEBACK_LINES)),
        # The exception line, seen on its own, is still an (unrecognised) exception.
        (len(log) - 1, Finding(len(log) - 1, Signal.CRASH, EXCEPTION_PATTERN, Severity.WARNING, log[-2], 1)),
        (len(log), Finding(len(log), gloo.signal, gloo.name, gloo.severity, gloo.example, 1)),
    ]


def test_evidence_is_bounded_however_long_the_lines() -> None:
    long_exception = "ValueError: " + "é" * 100_000
    [finding] = scan_lines([HEADER, '  File "x.py", line 1, in <module>', long_exception], CATALOG)
    assert finding.evidence.startswith(f"{HEADER}\nValueError: éé")
    assert finding.evidence.endswith("…")
    assert MAX_EVIDENCE_BYTES - 4 <= size(finding.evidence) <= MAX_EVIDENCE_BYTES

    long_line = example("gloo-timeout") + " " + "x" * 50_000
    [single] = scan_lines([long_line], CATALOG)
    assert single.pattern == "gloo-timeout" and size(single.evidence) <= MAX_EVIDENCE_BYTES


def test_a_limit_on_traceback_length_is_checked() -> None:
    with pytest.raises(ValueError):
        LogScanner(CATALOG, max_traceback_lines=1)
    scanner = LogScanner(CATALOG, max_traceback_lines=3)
    assert scanner.feed(HEADER) == []
    assert scanner.feed('  File "x.py", line 1, in <module>') == []
    assert scanner.feed("    f()") == [unrecognised(1, f"{HEADER}\n    f()", 3)]
    # Past the limit the traceback is over; its exception line is one on its own.
    assert scanner.feed("ValueError: x") == [Finding(4, Signal.CRASH, EXCEPTION_PATTERN, Severity.WARNING, "ValueError: x", 1)]


# --- a line matched outside a traceback --------------------------------------------


def test_a_matched_line_outside_a_traceback_is_a_finding_at_once() -> None:
    scanner = LogScanner(CATALOG)
    xid = example("nvidia-xid-79-fallen-off-bus")
    pattern = BY_NAME["nvidia-xid-79-fallen-off-bus"]
    assert scanner.feed("step 1 loss 0.5") == []
    assert scanner.feed(xid + "\n") == [Finding(2, Signal.CHIP_ERROR, pattern.name, Severity.CRITICAL, xid, 1)]
    assert scanner.feed("step 2 loss 0.4") == []
    assert scanner.flush() == []


def test_rank_prefixes_are_stripped_for_matching_and_kept_in_evidence() -> None:
    assert split_prefix("[rank1]:   File \"x.py\"") == ("[rank1]:", '  File "x.py"')
    assert split_prefix("[rank6]:[W729 10:15:17 TCPStore.cpp:125] x") == ("[rank6]:", "[W729 10:15:17 TCPStore.cpp:125] x")
    assert split_prefix("[default0]: ValueError: x") == ("[default0]:", "ValueError: x")
    assert split_prefix("(RayTrainWorker pid=8464, ip=10.0.0.3) Traceback") == ("(RayTrainWorker pid=8464, ip=10.0.0.3)", "Traceback")
    assert split_prefix("[E626 06:24:44 ProcessGroupNCCL.cpp:616] x") == ("", "[E626 06:24:44 ProcessGroupNCCL.cpp:616] x")
    # A pattern anchored at the start of the message still matches behind a prefix.
    line = "[rank3]: MemoryError: Unable to allocate 8.00 GiB for an array"
    [finding] = scan_lines([line], CATALOG)
    assert (finding.pattern, finding.evidence) == ("python-memory-error", line)


# --- catalog validation ------------------------------------------------------------

BASE = r"""version: 1
patterns:
  - name: gloo-timeout
    signal: interconnect_timeout
    regex: 'Timed out waiting \d+ms'
    severity: error
    vendor: any
    source: https://example.org/gloo
    example: 'RuntimeError: Timed out waiting 1800000ms for recv operation to complete'
  - name: cuda-oom
    signal: oom
    regex: 'CUDA out of memory'
    severity: error
    vendor: nvidia
    source: https://example.org/oom
    example: 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'
"""
SIGNALS = "interconnect_timeout, chip_error, oom, network, crash, user_error"
KEYS = "name, signal, regex, severity, vendor, source, examples"
ALLOWED = f"{KEYS}, example"


def problems(text: str) -> list[str]:
    with pytest.raises(CatalogError) as info:
        load_catalog_bytes(text.encode(), "p.yaml")
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def edit(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def test_a_small_catalog_loads() -> None:
    catalog = load_catalog_bytes(BASE.encode(), "p.yaml")
    assert [(p.name, p.signal, p.severity, p.vendor, p.line) for p in catalog.patterns] == [
        ("gloo-timeout", Signal.INTERCONNECT_TIMEOUT, Severity.ERROR, "any", 3),
        ("cuda-oom", Signal.OOM, Severity.ERROR, "nvidia", 10),
    ]
    assert catalog.source == "p.yaml"


@pytest.mark.parametrize(("old", "new", "expected"), [
    pytest.param(
        "    severity: error\n    vendor: any", "    severty: error\n    vendor: any",
        ["p.yaml:3: pattern 'gloo-timeout': missing required key 'severity'",
         f"p.yaml:6: pattern 'gloo-timeout': unknown key 'severty'; did you mean 'severity'? allowed: {ALLOWED}"],
        id="typo-key"),
    pytest.param(
        "signal: oom", "signal: om",
        [f"p.yaml:11: pattern 'cuda-oom' signal: 'om' is not allowed; did you mean 'oom'? allowed: {SIGNALS}"],
        id="bad-signal"),
    pytest.param(
        "signal: oom", "signal: hang",  # a watcher's signal, not one a log line carries
        [f"p.yaml:11: pattern 'cuda-oom' signal: 'hang' is not allowed; allowed: {SIGNALS}"],
        id="non-log-signal"),
    pytest.param(
        "severity: error\n    vendor: nvidia", "severity: fatal\n    vendor: nvidia",
        ["p.yaml:13: pattern 'cuda-oom' severity: 'fatal' is not allowed; allowed: warning, error, critical"],
        id="bad-severity"),
    pytest.param(
        "vendor: nvidia", "vendor: nvida",
        ["p.yaml:14: pattern 'cuda-oom' vendor: 'nvida' is not allowed; did you mean 'nvidia'? allowed: ascend, nvidia, any"],
        id="bad-vendor"),
    pytest.param(
        r"regex: 'Timed out waiting \d+ms'", r"regex: 'Timed out (waiting \d+ms'",
        ["p.yaml:5: pattern 'gloo-timeout' regex does not compile: missing ), unterminated subpattern at position 10"],
        id="bad-regex"),
    pytest.param(
        "regex: 'CUDA out of memory'", "regex: 'CUDA out of memory|'",
        ["p.yaml:12: pattern 'cuda-oom' regex matches the empty string, so it would match every line"],
        id="regex-matches-everything"),
    pytest.param(
        "example: 'RuntimeError: Timed out waiting 1800000ms for recv operation to complete'",
        "example: 'RuntimeError: timed out waiting 1800000ms'",
        ["p.yaml:9: pattern 'gloo-timeout': the example is not matched by the pattern's own regex"],
        id="example-not-matched"),
    pytest.param(
        "name: cuda-oom", "name: gloo-timeout",
        ["p.yaml:10: pattern 'gloo-timeout': the name is used twice (first at line 3); names must be unique"],
        id="duplicate-name"),
    pytest.param(
        "name: cuda-oom", "name: python-traceback-unrecognised",
        ["p.yaml:10: pattern 'python-traceback-unrecognised': the name is reserved for tracebacks that no pattern matches"],
        id="reserved-name"),
    pytest.param(
        "name: cuda-oom", "name: CUDA_OOM",
        ["p.yaml:10: pattern 'CUDA_OOM': a name is kebab-case (lower-case letters, digits, single '-')"],
        id="name-not-kebab-case"),
    pytest.param(
        "    vendor: any\n", "    vendor: any\n    vendor: nvidia\n",
        ["p.yaml:8: pattern 'gloo-timeout': duplicate key 'vendor' (YAML would silently keep only the last)"],
        id="duplicate-key"),
    pytest.param(
        "example: 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'", "example: 2024-01-01",
        ["p.yaml:16: pattern 'cuda-oom' example must be a non-empty string, got datetime.date(2024, 1, 1)"],
        id="example-not-a-string"),
    pytest.param(
        r"regex: 'Timed out waiting \d+ms'", r"regex: 'Timed out waiting \d+ms|Tried to allocate'",
        ["p.yaml:16: pattern 'cuda-oom': its example is matched first by the earlier pattern 'gloo-timeout' "
         "(line 3, signal interconnect_timeout); move this entry above it or narrow that regex"],
        id="example-shadowed"),
    pytest.param(
        "version: 1", "version: 2",
        ["p.yaml:1: version must be 1 (the catalog format this trainguard reads), got 2"],
        id="version"),
    pytest.param(
        "patterns:", "pattern:",
        ["p.yaml:1: catalog: missing required key 'patterns'",
         "p.yaml:2: catalog: unknown key 'pattern'; did you mean 'patterns'? allowed: version, patterns"],
        id="typo-top-key"),
    pytest.param(
        "    signal: oom", "    signal: [oom",
        ["p.yaml:12: not valid YAML: expected ',' or ']', but got ':'"],
        id="not-yaml"),
])
def test_catalog_problems_are_reported_at_their_line(old: str, new: str, expected: list[str]) -> None:
    assert problems(edit(old, new)) == expected


def test_every_catalog_problem_is_reported_at_once() -> None:
    text = (BASE.replace("signal: interconnect_timeout", "signal: timeout")
            .replace("vendor: nvidia", "vendor: amd")
            .replace("    source: https://example.org/oom\n", ""))
    assert problems(text) == [
        f"p.yaml:4: pattern 'gloo-timeout' signal: 'timeout' is not allowed; allowed: {SIGNALS}",
        "p.yaml:10: pattern 'cuda-oom': missing required key 'source'",
        "p.yaml:14: pattern 'cuda-oom' vendor: 'amd' is not allowed; allowed: ascend, nvidia, any",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("", ["p.yaml:1: the file is empty; a catalog needs version and patterns"]),
    ("version: 1\npatterns: []\n", [f"p.yaml:2: patterns must be a non-empty list of patterns ({KEYS}), got an empty list"]),
    ("version: 1\npatterns: {}\n", [f"p.yaml:2: patterns must be a non-empty list of patterns ({KEYS}), got a mapping"]),
    ("version: 1\npatterns:\n  - just-a-name\n", [f"p.yaml:3: pattern #1 must be a mapping of keys ({ALLOWED}), got 'just-a-name'"]),
])
def test_catalog_shape_problems(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_an_example_is_checked_the_way_the_scanner_matches_it() -> None:
    # The scanner strips a rank prefix before matching; so does the example check.
    text = edit("example: 'RuntimeError: Timed out waiting 1800000ms for recv operation to complete'",
                "example: '[rank1]: Timed out waiting 5ms for recv'").replace(
        r"regex: 'Timed out waiting \d+ms'", r"regex: '^Timed out waiting \d+ms'")
    catalog = load_catalog_bytes(text.encode(), "p.yaml")
    assert catalog.match("[rank1]: Timed out waiting 5ms for recv") is catalog.patterns[0]


def test_an_unreadable_catalog_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / "missing.yaml")
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}:0: cannot read: No such file or directory"


@pytest.mark.timeout(10)
def test_a_catalog_that_is_a_fifo_a_device_or_huge_is_refused_at_once(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    with open(tmp_path / "big.yaml", "wb") as f:
        f.truncate(20 * 1024 * 1024)
    for name, reason in [
        ("fifo.yaml", "refused: it is a FIFO (named pipe); a fault catalog must be a regular file (or a symlink to one)"),
        ("zero.yaml", "refused: it is a character device; a fault catalog must be a regular file (or a symlink to one)"),
        ("big.yaml", "refused: 20971520 bytes; a fault catalog may hold at most 1 MiB"),
    ]:
        with pytest.raises(CatalogError) as info:
            load_catalog(tmp_path / name)
        assert str(info.value) == f"{tmp_path / name}:0: {reason}"


def test_a_catalog_symlinked_to_a_secret_key_is_refused_without_quoting_it(tmp_path: Path) -> None:
    from supervisor.shared import keys

    _, secret = keys.generate(tmp_path / "keys", "agent")
    (tmp_path / "catalog.yaml").symlink_to(secret)
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / "catalog.yaml")
    assert "looks like a secret key file" in str(info.value)
    assert "secret-key" not in str(info.value) and secret.read_text().split('"')[-2] not in str(info.value)


# --- invariants --------------------------------------------------------------------

_PIECES = st.sampled_from([
    HEADER, '  File "x.py", line 1, in <module>', "    f()", "ValueError: x", "", "  ",
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
    example("cuda-out-of-memory"), example("gloo-timeout"), example("nccl-watchdog-collective-timeout"),
])
_LINES = st.lists(
    st.tuples(st.sampled_from(["", "[rank0]: ", "[rank1]: ", "[rank12]:", "(w pid=3) "]),
              st.one_of(_PIECES, st.text(max_size=80))).map("".join),
    max_size=120,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=_LINES, limit=st.integers(min_value=2, max_value=12))
def test_scanning_never_raises_and_findings_stay_in_range(lines: list[str], limit: int) -> None:
    scanner = LogScanner(CATALOG, max_traceback_lines=limit)
    found = [f for line in lines for f in scanner.feed(line)] + scanner.flush()
    assert scanner.flush() == []
    assert len(found) <= len(lines)
    for f in found:
        assert 1 <= f.line <= f.line + f.lines - 1 <= len(lines)
        assert size(f.evidence) <= MAX_EVIDENCE_BYTES
        assert isinstance(f.signal, Signal) and isinstance(f.severity, Severity)
    # Each finding starts on its own line.
    assert len({f.line for f in found}) == len(found)


# --- every example of the shipped catalog (issue #12: measured on real lines) -------

ALL_EXAMPLES = [(p, n, line, src) for p in CATALOG.patterns
                for n, (line, src) in enumerate(zip(p.examples, p.example_sources))]


@pytest.mark.parametrize(("pattern", "number", "line", "source"), ALL_EXAMPLES,
                         ids=[f"{p.name}#{n}" for p, n, _, _ in ALL_EXAMPLES])
def test_every_example_line_is_real_sourced_and_decided_by_its_own_entry(pattern, number, line, source) -> None:
    # A source is a public page or a repository path where the exact line was read.
    assert source.startswith("https://") or re.fullmatch(r"[\w.-]+/[\w.-]+:\S+", source), source
    assert CATALOG.match(line) is pattern
    [finding] = scan_lines([line], CATALOG)
    assert (finding.signal, finding.pattern) == (pattern.signal, pattern.name)


def test_every_shipped_pattern_has_an_example() -> None:
    assert all(p.examples and len(p.examples) == len(p.example_sources) for p in CATALOG.patterns)
    assert len(ALL_EXAMPLES) > len(CATALOG.patterns)  # several entries carry more than one


def test_user_error_patterns_come_after_every_infrastructure_pattern() -> None:
    # Catalog order is specificity: a traceback with an infrastructure line and a
    # programming-error line is the infrastructure's fault.
    kinds = [p.signal is Signal.USER_ERROR for p in CATALOG.patterns]
    first_generic_user = next(i for i, p in enumerate(CATALOG.patterns) if p.name == "torch-shape-mismatch")
    assert not any(p.signal not in (Signal.USER_ERROR, Signal.CRASH) for p in CATALOG.patterns[first_generic_user:])
    assert kinds.count(True) >= 6


EXAMPLES_BASE = BASE.replace(
    "    example: 'RuntimeError: Timed out waiting 1800000ms for recv operation to complete'\n",
    "    examples:\n"
    "      - 'RuntimeError: Timed out waiting 1800000ms for recv operation to complete'\n"
    "      - line: '[rank1]: Timed out waiting 5ms for send operation to complete'\n"
    "        source: https://example.org/other\n")


def test_examples_may_be_a_list_each_with_its_own_source() -> None:
    catalog = load_catalog_bytes(EXAMPLES_BASE.encode(), "p.yaml")
    gloo = catalog.patterns[0]
    assert gloo.examples == ("RuntimeError: Timed out waiting 1800000ms for recv operation to complete",
                             "[rank1]: Timed out waiting 5ms for send operation to complete")
    assert gloo.example_sources == ("https://example.org/gloo", "https://example.org/other")
    assert gloo.example == gloo.examples[0]


@pytest.mark.parametrize(("old", "new", "expected"), [
    pytest.param("      - line: '[rank1]: Timed out waiting 5ms for send operation to complete'\n",
                 "      - line: '[rank1]: send operation timed out'\n",
                 ["p.yaml:11: pattern 'gloo-timeout': the example is not matched by the pattern's own regex"],
                 id="second-example-not-matched"),
    pytest.param("        source: https://example.org/other\n", "",
                 ["p.yaml:11: pattern 'gloo-timeout' examples: missing required key 'source'"],
                 id="example-mapping-without-source"),
])
def test_each_example_is_checked(old: str, new: str, expected: list[str]) -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog_bytes(EXAMPLES_BASE.replace(old, new).encode(), "p.yaml")
    assert [str(p) for p in info.value.problems] == expected


def test_a_pattern_without_an_example_is_refused() -> None:
    text = BASE.replace("    example: 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'\n", "")
    assert problems(text) == ["p.yaml:10: pattern 'cuda-oom': missing required key 'examples' "
                              "(at least one real log line the regex matches, copied from `source`)"]
    empty = EXAMPLES_BASE.replace(
        "    examples:\n      - 'RuntimeError: Timed out waiting 1800000ms for recv operation to complete'\n"
        "      - line: '[rank1]: Timed out waiting 5ms for send operation to complete'\n"
        "        source: https://example.org/other\n", "    examples: []\n")
    assert problems(empty) == ["p.yaml:9: pattern 'gloo-timeout' examples must be a non-empty list of real log lines, "
                               "got an empty list"]
    both = EXAMPLES_BASE.replace("    examples:\n", "    example: 'Timed out waiting 1ms'\n    examples:\n")
    assert problems(both) == ["p.yaml:9: pattern 'gloo-timeout': give `examples` (a list) or one `example`, not both"]


# --- unrecognised failures: crash, with a fingerprint --------------------------------


def test_a_bare_exception_line_is_an_unrecognised_crash() -> None:
    # What a traceback formatter without the standard header (rich) leaves at the margin.
    log = ["│ ❱  88 │   p_mask = batch[\"attention_mask\"]   │", "╰──────╯", "KeyError: 'attention_mask'", "step 3"]
    assert scan_lines(log, CATALOG) == [
        Finding(3, Signal.CRASH, EXCEPTION_PATTERN, Severity.WARNING, "KeyError: 'attention_mask'", 1)]
    # A recognised one is what its pattern says.
    [named] = scan_lines(["NameError: name 'log_dir' is not defined"], CATALOG)
    assert (named.signal, named.pattern) == (Signal.USER_ERROR, "python-programming-error")


def test_most_specific_prefers_catalog_order_then_the_earliest_line() -> None:
    log = [example("nccl-watchdog-collective-timeout"), example("cuda-uncorrectable-ecc"),
           HEADER, '  File "t.py", line 1, in <module>', "ValueError: bad batch", "tail"]
    found = scan_lines(log, CATALOG)
    assert [f.pattern for f in found] == ["nccl-watchdog-collective-timeout", "cuda-uncorrectable-ecc", TRACEBACK_PATTERN]
    best = most_specific(found, CATALOG)
    assert best is not None and best.pattern == "nccl-watchdog-collective-timeout"
    assert specificity(found[2], CATALOG) == len(CATALOG.patterns)
    assert most_specific([], CATALOG) is None
    assert most_specific(found[2:], CATALOG) is found[2]


def test_an_unrecognised_traceback_has_a_fingerprint_and_a_recognised_fault_none() -> None:
    first = scan_lines([HEADER, '  File "t.py", line 9, in step', "ValueError: bad value 17 at 0x7f3a22"], CATALOG)[0]
    again = scan_lines([HEADER, '  File "t.py", line 9, in step', "ValueError: bad value 18 at 0x7f4b00"], CATALOG)[0]
    other = scan_lines([HEADER, '  File "t.py", line 9, in step', "KeyError: 'labels'"], CATALOG)[0]
    assert fingerprint(first) == fingerprint(again) == "ValueError: bad value # at <addr>"
    assert fingerprint(first, step=120) == "ValueError: bad value # at <addr> @ step 120"
    assert fingerprint(first, step=120) != fingerprint(again, step=121)
    assert fingerprint(other) == "KeyError: 'labels'"
    [ecc] = scan_lines([example("cuda-uncorrectable-ecc")], CATALOG)
    assert fingerprint(ecc) is None  # an infrastructure fault repeats because it is still there


def test_a_missing_example_does_not_hide_the_other_problems_of_the_catalog() -> None:
    text = (BASE.replace("    example: 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'\n", "")
            .replace("name: cuda-oom", "name: gloo-timeout").replace("signal: oom", "signal: om"))
    assert problems(text) == [
        "p.yaml:10: pattern 'gloo-timeout': missing required key 'examples' "
        "(at least one real log line the regex matches, copied from `source`)",
        "p.yaml:10: pattern 'gloo-timeout': the name is used twice (first at line 3); names must be unique",
        f"p.yaml:11: pattern 'gloo-timeout' signal: 'om' is not allowed; did you mean 'oom'? allowed: {SIGNALS}",
    ]
