"""Files the daemon reads are not a way in (issue #10, item 6): a FIFO, a device, a huge
file, a symlink to the daemon's secret key, an alias bomb, all in a policy directory."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from supervisor.cli.localcluster import free_tcp_endpoint
from supervisor.daemon.loop import Daemon, DaemonConfig
from supervisor.policy.directory import PolicyDirectory
from supervisor.policy.loader import PolicyError, load_bytes, load_file
from supervisor.policy.shipped import shipped_policy_dir
from supervisor.shared import keys
from supervisor.shared.safefile import POLICY_LIMIT, FileRefused, read_bounded, read_bounded_text
from supervisor.shared.yamlcheck import MAX_NODES

pytestmark = pytest.mark.timeout(20)

DEFAULT_TEXT = (shipped_policy_dir() / "default.yaml").read_text()


def secret_key(tmp_path: Path) -> tuple[Path, str]:
    """A freshly generated daemon key pair; the secret file and its secret-key text."""
    _, secret = keys.generate(tmp_path / "keys", "daemon")
    line = next(raw for raw in secret.read_text().splitlines() if "secret-key" in raw)
    return secret, line.split('"')[1]


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_file(path)
    return [str(p) for p in info.value.problems]


def test_a_fifo_named_like_a_policy_is_refused_at_once(tmp_path):
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert problems_of(fifo) == [
        f"{fifo}:0: refused: it is a FIFO (named pipe); a policy file must be a regular file (or a symlink to one)"
    ]
    changes = PolicyDirectory(tmp_path).load_all(now=1.0)  # at start-up too, reported
    assert [(c.event, c.fields["file"]) for c in changes] == [("policy.rejected", str(fifo))]
    assert time.monotonic() - started < 2


def test_a_symlink_to_dev_zero_is_refused_without_reading(tmp_path):
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    assert problems_of(link) == [
        f"{link}:0: refused: it is a character device; a policy file must be a regular file (or a symlink to one)"
    ]


def test_a_symlink_to_a_regular_policy_file_is_followed(tmp_path):
    real = tmp_path / "managed" / "default.yaml"
    real.parent.mkdir()
    real.write_text(DEFAULT_TEXT)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.yaml").symlink_to(real)
    directory = PolicyDirectory(tmp_path / "policies")
    assert [c.event for c in directory.load_all(now=1.0)] == ["policy.loaded"]


def test_a_huge_policy_is_refused_by_its_size_without_reading_it(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.write(DEFAULT_TEXT.encode())
        f.truncate(20 * 1024 * 1024)  # 20 MB
    started = time.monotonic()
    assert problems_of(big) == [f"{big}:0: refused: 20971520 bytes; a policy file may hold at most 1 MiB"]
    assert time.monotonic() - started < 1


def test_a_file_that_grows_while_read_is_cut_at_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"a" * 10)
    real_fstat = os.fstat

    def growing(fd):  # the file grows between the size check and the read
        path.write_bytes(b"a" * 200)
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", growing)
    with pytest.raises(FileRefused, match="it grew past 100 bytes while read"):
        read_bounded(path, 100, "a test file")


def test_a_secret_key_symlink_never_reaches_a_refusal_policy_show_or_a_log(tmp_path):
    secret, text = secret_key(tmp_path)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "key.yaml").symlink_to(secret)
    (policies / "default.yaml").write_text(DEFAULT_TEXT)

    problems = problems_of(policies / "key.yaml")
    assert problems == [f"{policies / 'key.yaml'}:0: it looks like a secret key file (never read as anything else, never quoted)"]
    directory = PolicyDirectory(policies)
    changes = directory.load_all(now=1.0)
    assert text not in repr(changes)
    assert text not in json.dumps(directory.describe())

    # The daemon itself: what it logs while loading the directory, and what it stores.
    with capture_logs() as logs:
        daemon = Daemon(DaemonConfig(bind=free_tcp_endpoint(), ctl=free_tcp_endpoint(),
                                     state_dir=tmp_path / "state", policy_dir=policies, insecure=True))
        try:
            daemon._flush()
        finally:
            daemon.close()
    rejected = [e for e in logs if e["event"] == "policy.rejected"]
    assert rejected and rejected[0]["file"] == str(policies / "key.yaml")
    assert text not in repr(logs)
    assert text.encode() not in (tmp_path / "state" / "state.db").read_bytes()


def test_a_secret_key_that_is_valid_yaml_text_is_still_never_quoted(tmp_path):
    # Without its comment lines and spaces the key file is still one YAML value: even
    # when nothing recognises it as key material, a file that is one value is not quoted.
    _, text = secret_key(tmp_path)
    data = f"metadata curve public-key x private {text}\n".encode()
    with pytest.raises(PolicyError) as info:
        load_bytes(data, "p.yaml")
    assert [str(p) for p in info.value.problems] == [
        "p.yaml:1: the file holds a single value, not a mapping of keys; a policy needs at least version, pools and rules"
    ]


@pytest.mark.parametrize("data, problem", [
    (b"version: 1\nname: \x00\x01\x02\n", "binary, not text (control character NUL at character 17)"),
    (b"\x7fELF\x02\x01\x01\x00", "binary, not text (control character U+007F at character 0)"),
    (b"version: 1\nname: \xff\n", "not UTF-8 text (invalid start byte at byte 17)"),
])
def test_a_file_that_is_not_text_is_refused_without_a_byte_of_it(tmp_path, data, problem):
    path = tmp_path / "p.yaml"
    path.write_bytes(data)
    assert problems_of(path) == [f"{path}:0: {problem}"]


def test_an_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["version: 1", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    started = time.monotonic()
    with pytest.raises(PolicyError) as info:
        load_bytes("\n".join(lines).encode(), "p.yaml")
    assert time.monotonic() - started < 1
    (problem,) = info.value.problems
    assert f"more than {MAX_NODES} values" in problem.message


def test_a_huge_flat_document_under_the_size_limit_stops_composing_early(tmp_path):
    data = ("version: 1\nx: [" + "1, " * (POLICY_LIMIT // 3 - 20) + "1]\n").encode()
    assert len(data) <= POLICY_LIMIT
    started = time.monotonic()
    with pytest.raises(PolicyError, match=f"more than {MAX_NODES} values"):
        load_bytes(data, "p.yaml")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("text, problem", [
    ("version: 1\nx: " + "[" * 2000 + "]" * 2000 + "\n", "nested more than 64 levels deep"),
    ("version: 1\nx: &a [*a]\n", "an alias refers to a value that contains it"),
])
def test_deep_and_recursive_documents_are_refused(text, problem):
    with pytest.raises(PolicyError, match=problem):
        load_bytes(text.encode(), "p.yaml")


def test_a_long_value_is_quoted_cut_short():
    text = DEFAULT_TEXT.replace("version: 1", "version: " + "9" * 5000)
    with pytest.raises(PolicyError) as info:
        load_bytes(text.encode(), "p.yaml")
    assert all(len(str(p)) < 300 for p in info.value.problems)


def test_read_bounded_text_refuses_key_material_and_reads_text(tmp_path):
    pem = tmp_path / "id.yaml"
    pem.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(FileRefused) as info:
        read_bounded_text(pem, 1024, "a test file")
    assert "b3BlbnNz" not in str(info.value) and "secret key" in str(info.value)
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: 1\n")
    assert read_bounded_text(ok, 1024, "a test file") == "a: 1\n"


def test_a_fifo_read_never_blocks_even_when_swapped_in_after_the_check(tmp_path, monkeypatch):
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(tmp_path / "decoy") if p == str(fifo) else real_stat(p, *a, **k))
    (tmp_path / "decoy").write_text("a: 1\n")  # the stat sees a regular file; the open gets the FIFO
    result: list[BaseException] = []
    reader = threading.Thread(target=lambda: result.append(pytest.raises(FileRefused, read_bounded, fifo, 100, "x").value))
    reader.start()
    reader.join(timeout=3)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert "FIFO" in str(result[0])


def test_the_daemon_reads_changed_policy_files_off_its_loop(tmp_path, monkeypatch):
    from supervisor.daemon import policywatch

    release = threading.Event()

    def slow_load(path):
        release.wait(5)
        return None  # "the file is gone"

    monkeypatch.setattr(policywatch, "load_outcome", slow_load)
    watcher = policywatch.DirectoryWatcher(tmp_path, debounce=0.0)
    try:
        watcher._touched[tmp_path / "a.yaml"] = 0.0
        watcher._touched[tmp_path / "b.yaml"] = 0.0
        started = time.monotonic()
        assert watcher.loaded(now=1.0) == []  # the loop goes on while the files are read
        assert time.monotonic() - started < 0.5
        release.set()
        done: list = []
        deadline = time.monotonic() + 5
        while len(done) < 2 and time.monotonic() < deadline:
            done += watcher.loaded(now=2.0)
            time.sleep(0.01)
        assert [(path.name, outcome()) for path, outcome in done] == [("a.yaml", None), ("b.yaml", None)]
    finally:
        watcher.stop()


def test_a_fifo_or_device_in_an_allow_list_directory_is_refused_not_read(tmp_path):
    from supervisor.daemon.zap import AllowList

    agents = tmp_path / "agents"
    public, _ = keys.generate(tmp_path / "k", "n1")
    agents.mkdir()
    (agents / "n1.key").write_bytes(public.read_bytes())
    os.mkfifo(agents / "n2.key")
    (agents / "n3.key").symlink_to("/dev/zero")
    allow = AllowList(agents)
    started = time.monotonic()
    assert allow.refresh()
    assert time.monotonic() - started < 2
    assert sorted(allow.keys.values()) == ["n1.key"]
    assert allow.problems == [
        f"cannot read public key {agents / 'n2.key'}: refused: it is a FIFO (named pipe); a public key file must be a regular file (or a symlink to one)",
        f"cannot read public key {agents / 'n3.key'}: refused: it is a character device; a public key file must be a regular file (or a symlink to one)",
    ]
