"""supervisor.policy.directory: the policy directory (load, reload, keep the last good one)
and the watcher that says which files changed, with a real watchdog observer."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from supervisor.daemon.policywatch import DirectoryWatcher
from supervisor.policy.directory import PolicyDirectory, is_policy_file
from supervisor.policy.shipped import shipped_policy_dir
from supervisor.shared.vocab import Action

POLICIES = shipped_policy_dir()
DEFAULT_TEXT = (POLICIES / "default.yaml").read_text()

SMALL = """\
version: 1
name: {name}
pools:
  ascend: {{accelerator: ascend}}
rules:
  - name: r
    when: {{signal: crash}}
    then: {{action: {action}}}
"""


def small(name: str = "small", action: str = "restart") -> str:
    return SMALL.format(name=name, action=action)


def events(changes: list) -> list[str]:
    return [c.event for c in changes]


# --- is_policy_file ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("default.yaml", True),
        ("default.yml", True),
        ("my.policy.yaml", True),
        (".default.yaml", False),  # hidden
        (".default.yaml.tmp", False),  # editor temp file
        (".default.yaml.swp", False),  # vim swap file
        ("default.yaml~", False),  # backup file
        ("default.yaml.bak", False),
        ("4913", False),  # vim's write test file
        ("README.md", False),
        ("default.json", False),
        ("yaml", False),
    ],
)
def test_is_policy_file(name: str, expected: bool) -> None:
    assert is_policy_file(Path("/etc/trainguard/policies") / name) is expected


# --- PolicyDirectory --------------------------------------------------------------


def test_load_all_loads_the_valid_files_and_records_the_refused_ones(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text(DEFAULT_TEXT)
    (tmp_path / "small.yml").write_text(small())
    (tmp_path / "broken.yaml").write_text(small().replace("signal: crash", "signal: crsh"))
    (tmp_path / "notes.txt").write_text("not a policy")
    (tmp_path / ".hidden.yaml").write_text("version: [")
    (tmp_path / "sub.yaml").mkdir()  # a directory is not a file

    directory = PolicyDirectory(tmp_path)
    changes = directory.load_all(now=1000.0)

    assert [(c.event, c.fields.get("policy"), Path(c.fields["file"]).name) for c in changes] == [
        ("policy.rejected", None, "broken.yaml"),
        ("policy.loaded", "default", "default.yaml"),
        ("policy.loaded", "small", "small.yml"),
    ]
    assert sorted(directory.by_name) == ["default", "small"]
    assert directory.get("default").rules[0].name == "user-error"  # type: ignore[union-attr]
    assert directory.get("nope") is None
    assert directory.by_name["small"].loaded_at == 1000.0
    broken = tmp_path / "broken.yaml"
    assert directory.rejected == {
        broken: [f"{broken}:7: rule 'r' when signal: 'crsh' is not allowed; did you mean 'crash'? allowed: crash, hang, "
                 "interconnect_timeout, chip_error, chip_degraded, oom, network, node_lost, straggler, no_capacity, user_error"],
    }
    rejected = changes[0].fields
    assert rejected["errors"] == directory.rejected[broken]
    assert rejected["kept"] is None
    assert rejected["action"] == "no policy loaded from this file"
    loaded = changes[1].fields
    assert loaded["sha256"] == directory.get("default").sha256  # type: ignore[union-attr]
    assert loaded["previous_sha256"] is None
    assert loaded["rules"] == ["user-error", "ascend-unstable", "bad-node", "chip-fault", "node-lost", "any-fault", "degraded",
                              "ascend-no-capacity"]


def test_describe_lists_policies_and_refused_files(tmp_path: Path) -> None:
    (tmp_path / "small.yaml").write_text(small())
    (tmp_path / "broken.yaml").write_text("")
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=5.0)
    described = directory.describe()
    assert described["directory"] == str(tmp_path)
    assert [p["name"] for p in described["policies"]] == ["small"]
    assert described["policies"][0]["rules"] == [{"name": "r", "action": "restart", "line": 6}]
    assert described["rejected"] == [
        {"file": str(tmp_path / "broken.yaml"),
         "errors": [f"{tmp_path / 'broken.yaml'}:1: the file is empty; a policy needs at least version, pools and rules"]},
    ]


def test_a_valid_edit_swaps_in_the_new_policy(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(small(action="restart"))
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=1.0)
    old = directory.get("small")
    assert old is not None

    path.write_text(small(action="stop"))
    changes = directory.reload(path, now=2.0)

    new = directory.get("small")
    assert new is not None and new is not old
    assert new.rules[0].then.action is Action.STOP
    assert old.rules[0].then.action is Action.RESTART  # jobs holding the old object keep it whole
    assert new.sha256 != old.sha256
    assert events(changes) == ["policy.loaded"]
    assert changes[0].fields == {
        "policy": "small", "file": str(path), "sha256": new.sha256, "previous_sha256": old.sha256, "rules": ["r"],
    }
    assert directory.by_name["small"].loaded_at == 2.0


def test_a_broken_edit_is_rejected_and_the_old_policy_stays(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(small())
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=1.0)
    old = directory.get("small")

    path.write_text(small().replace("signal: crash", "signal: crash, withn: 5m"))
    changes = directory.reload(path, now=2.0)

    assert events(changes) == ["policy.rejected"]
    assert changes[0].fields == {
        "file": str(path),
        "errors": [f"{path}:7: rule 'r' when: unknown key 'withn'; did you mean 'within'? "
                   "allowed: signal, pool, node, severity, count, within, per"],
        "kept": "small",
        "action": "policy 'small' stays in force as it was",
    }
    assert directory.get("small") is old
    assert directory.by_name["small"].loaded_at == 1.0
    assert directory.rejected[path] == changes[0].fields["errors"]

    # Fixing the file clears the rejection.
    path.write_text(small(action="alert"))
    assert events(directory.reload(path, now=3.0)) == ["policy.loaded"]
    assert path not in directory.rejected
    assert directory.get("small").rules[0].then.action is Action.ALERT  # type: ignore[union-attr]


def test_restoring_the_running_content_after_a_broken_edit_clears_the_rejection(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(small())
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=1.0)
    old = directory.get("small")
    path.write_text("version: [")
    assert events(directory.reload(path, now=2.0)) == ["policy.rejected"]

    path.write_text(small())
    directory.reload(path, now=3.0)

    assert directory.rejected == {}
    assert directory.get("small") is old


def test_an_unchanged_resave_announces_nothing(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(small())
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=1.0)
    old = directory.get("small")

    path.write_text(small())  # same bytes, new mtime
    assert directory.reload(path, now=2.0) == []
    assert directory.get("small") is old
    assert directory.by_name["small"].loaded_at == 1.0


def test_deleting_the_file_removes_its_policy(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(small())
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=1.0)

    path.unlink()
    changes = directory.reload(path, now=2.0)

    assert events(changes) == ["policy.removed"]
    assert changes[0].fields == {
        "policy": "small", "file": str(path), "action": "jobs already running under it keep it until they end",
    }
    assert directory.get("small") is None
    assert directory.reload(path, now=3.0) == []  # gone already: nothing more to say


def test_deleting_a_refused_file_forgets_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("")
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=1.0)
    assert path in directory.rejected
    path.unlink()
    assert directory.reload(path, now=2.0) == []
    assert directory.rejected == {}


def test_a_second_file_with_the_same_name_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(small(name="shared", action="restart"))
    (tmp_path / "b.yaml").write_text(small(name="shared", action="stop"))
    directory = PolicyDirectory(tmp_path)

    changes = directory.load_all(now=1.0)

    assert events(changes) == ["policy.loaded", "policy.rejected"]
    b = tmp_path / "b.yaml"
    assert changes[1].fields == {
        "file": str(b),
        "errors": [f"{b}:1: policy name 'shared' is already loaded from {tmp_path / 'a.yaml'}; names must be unique"],
        "kept": None,
        "action": "no policy loaded from this file",
    }
    assert directory.get("shared").rules[0].then.action is Action.RESTART  # type: ignore[union-attr]
    assert directory.get("shared").source == str(tmp_path / "a.yaml")  # type: ignore[union-attr]


def test_renaming_the_policy_inside_its_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(small(name="old-name"))
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=1.0)

    path.write_text(small(name="new-name"))
    changes = directory.reload(path, now=2.0)

    assert [(c.event, c.fields["policy"]) for c in changes] == [("policy.removed", "old-name"), ("policy.loaded", "new-name")]
    assert directory.get("old-name") is None
    assert directory.get("new-name") is not None


def test_a_yaml_tag_in_an_edit_is_rejected_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(small())
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=1.0)
    old = directory.get("small")

    path.write_text(small().replace("signal: crash", "signal: !oops crash"))
    changes = directory.reload(path, now=2.0)

    assert events(changes) == ["policy.rejected"]
    assert directory.get("small") is old


def test_renaming_the_file_keeps_the_policy(tmp_path: Path) -> None:
    (tmp_path / "z.yaml").write_text(small())
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=1.0)

    os.rename(tmp_path / "z.yaml", tmp_path / "a.yaml")
    # What the daemon does with DirectoryWatcher.due(): each touched path, sorted.
    changes = [c for p in sorted([tmp_path / "a.yaml", tmp_path / "z.yaml"]) for c in directory.reload(p, now=2.0)]

    assert directory.get("small") is not None
    assert directory.get("small").source == str(tmp_path / "a.yaml")  # type: ignore[union-attr]
    assert directory.rejected == {}
    assert "policy.rejected" not in events(changes)


def test_a_name_clash_on_edit_says_which_policy_stays(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(small(name="first"))
    b = tmp_path / "b.yaml"
    b.write_text(small(name="second"))
    directory = PolicyDirectory(tmp_path)
    directory.load_all(now=1.0)

    b.write_text(small(name="first"))
    (change,) = directory.reload(b, now=2.0)

    assert change.event == "policy.rejected"
    assert directory.get("second") is not None  # still in force, loaded from b.yaml
    assert change.fields["kept"] == "second"


# --- DirectoryWatcher, with a real observer ---------------------------------------


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[DirectoryWatcher]:
    w = DirectoryWatcher(tmp_path, debounce=0.1)
    w.start()
    try:
        yield w
    finally:
        w.stop()


def wait_due_at(w: DirectoryWatcher, clock: Callable[[], float], timeout: float = 5.0) -> list[Path]:
    """Poll `due(clock())` until it hands out something or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = w.due(clock())
        if ready:
            return ready
        time.sleep(0.02)
    return []


def wait_due(w: DirectoryWatcher, timeout: float = 5.0) -> list[Path]:
    return wait_due_at(w, time.monotonic, timeout)


def stays_quiet(w: DirectoryWatcher, seconds: float) -> list[Path]:
    """Whatever `due` hands out within `seconds`; [] if nothing."""
    return wait_due(w, timeout=seconds)


def test_a_new_file_is_due_once_after_the_debounce(tmp_path: Path, watcher: DirectoryWatcher) -> None:
    path = tmp_path / "default.yaml"
    path.write_text(DEFAULT_TEXT)

    assert wait_due(watcher) == [path]
    assert watcher.due(time.monotonic() + 10) == []  # handed out once


def test_nothing_is_due_before_the_debounce(tmp_path: Path) -> None:
    w = DirectoryWatcher(tmp_path, debounce=30.0)
    w.start()
    try:
        path = tmp_path / "default.yaml"
        path.write_text(DEFAULT_TEXT)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert w.due(time.monotonic()) == []
            time.sleep(0.02)
        # It was seen all along: with a clock past the debounce it is due.
        assert wait_due_at(w, lambda: time.monotonic() + 60) == [path]
    finally:
        w.stop()


def test_an_editor_save_by_rename_makes_the_target_due(tmp_path: Path, watcher: DirectoryWatcher) -> None:
    path = tmp_path / "default.yaml"
    path.write_text(DEFAULT_TEXT)
    assert wait_due(watcher) == [path]

    temp = tmp_path / ".default.yaml.tmp"
    temp.write_text(DEFAULT_TEXT.replace("max_restarts: 10", "max_restarts: 5"))
    os.replace(temp, path)

    assert wait_due(watcher) == [path]  # the hidden temp file is never handed out


def test_only_policy_files_are_due(tmp_path: Path, watcher: DirectoryWatcher) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.yaml").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.yaml").write_text("x")  # not watched: the watch is not recursive
    path = tmp_path / "real.yml"
    path.write_text(small())

    assert wait_due(watcher) == [path]


def test_watcher_and_directory_together(tmp_path: Path, watcher: DirectoryWatcher) -> None:
    directory = PolicyDirectory(tmp_path)
    path = tmp_path / "small.yaml"
    path.write_text(small())
    changes = [c for p in wait_due(watcher) for c in directory.reload(p, now=1.0)]
    assert events(changes) == ["policy.loaded"]

    temp = tmp_path / ".small.yaml.tmp"
    temp.write_text(small(action="stop"))
    os.replace(temp, path)
    deadline = time.monotonic() + 5
    changes = []
    while time.monotonic() < deadline and "policy.loaded" not in events(changes):
        due = wait_due(watcher, timeout=deadline - time.monotonic())
        changes += [c for p in due for c in directory.reload(p, now=2.0)]
    assert events(changes) == ["policy.loaded"]
    assert directory.get("small").rules[0].then.action is Action.STOP  # type: ignore[union-attr]

    path.unlink()
    changes = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "policy.removed" not in events(changes):
        due = wait_due(watcher, timeout=deadline - time.monotonic())
        changes += [c for p in due for c in directory.reload(p, now=3.0)]
    assert events(changes) == ["policy.removed"]
    assert directory.get("small") is None


def test_our_own_read_of_a_policy_file_does_not_make_it_due_again(tmp_path: Path, watcher: DirectoryWatcher) -> None:
    # Regression (f9d4468): inotify reports opened / closed_no_write for reads, and the
    # daemon's own reload read re-triggered a reload of every changed file forever.
    directory = PolicyDirectory(tmp_path)
    path = tmp_path / "small.yaml"
    path.write_text(small())
    for p in wait_due(watcher):
        directory.reload(p, now=1.0)  # reads the file

    assert stays_quiet(watcher, 1.0) == []
