"""The daemon's policy directory: load every policy file, and reload one when it changes.

`PolicyDirectory` owns the loaded policies (by name) and the files that were refused.
A changed file is loaded into a new `Policy` first and swapped in only if it is valid,
so a broken edit leaves the running policy in force. Jobs hold the `Policy` object they
started with; a reload changes what new decisions use, never half of one.

Noticing that a file changed is the daemon's job (`supervisor.daemon.policywatch`), and
so is reading it off the daemon loop: `load_outcome` reads and checks a file (anywhere),
`apply` swaps the outcome in (on the loop). `reload` is both, for the CLI and start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.policy.loader import PolicyError, load_file
from supervisor.policy.schema import Policy

SUFFIXES = (".yaml", ".yml")


def is_policy_file(path: Path) -> bool:
    """Top-level *.yaml / *.yml, not hidden (editor swap and temp files are)."""
    return path.suffix.lower() in SUFFIXES and not path.name.startswith(".")


#: What reading a policy file gave: the policy, why it was refused, or None (it is gone).
Outcome = Policy | PolicyError | None


def load_outcome(path: Path) -> Outcome:
    """Read and check one file. Bounded (supervisor.shared.safefile): a regular file of
    at most POLICY_LIMIT bytes, never a FIFO or device; safe to run off the daemon loop."""
    if not path.exists():
        return None
    try:
        return load_file(path)
    except PolicyError as exc:
        return exc


@dataclass(frozen=True)
class Loaded:
    policy: Policy
    loaded_at: float


@dataclass(frozen=True)
class Change:
    """What a (re)load did, as a log event: policy.loaded / policy.rejected / policy.removed."""

    event: str
    fields: dict[str, Any]


class PolicyDirectory:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.by_name: dict[str, Loaded] = {}
        self._name_of_file: dict[Path, str] = {}
        self.rejected: dict[Path, list[str]] = {}

    def load_all(self, now: float) -> list[Change]:
        changes = []
        for path in sorted(self.directory.iterdir()):
            # Not only regular files: a FIFO, device or socket named *.yaml is refused
            # (never opened for a blocking read) and reported, not skipped in silence.
            if is_policy_file(path) and not path.is_dir():
                changes.extend(self.reload(path, now))
        return changes

    def get(self, name: str) -> Policy | None:
        loaded = self.by_name.get(name)
        return loaded.policy if loaded else None

    def reload(self, path: Path, now: float) -> list[Change]:
        """Load `path` again; swap it in if valid, keep the old one if not."""
        path = Path(path)
        return self.apply(path, load_outcome(path), now)

    def apply(self, path: Path, outcome: Outcome, now: float) -> list[Change]:
        """Swap in what `load_outcome(path)` gave (perhaps on another thread: it touches
        nothing of ours), or record the refusal, or the file's removal."""
        if outcome is None:
            return self._removed(path)
        if isinstance(outcome, PolicyError):
            return [self._reject(path, [str(p) for p in outcome.problems])]
        policy = outcome
        owner = next((f for f, n in self._name_of_file.items() if n == policy.name and f != path), None)
        changes: list[Change] = []
        if owner is not None and not owner.exists():
            # A rename (old name's event not processed yet): the old file is gone.
            changes.extend(self._removed(owner))
            owner = None
        if owner is not None:
            error = f"{path}:1: policy name {policy.name!r} is already loaded from {owner}; names must be unique"
            return [self._reject(path, [error])]
        previous = self._name_of_file.get(path)
        if previous is not None and previous != policy.name:
            changes.extend(self._removed(path))
        old = self.by_name.get(policy.name)
        was_rejected = self.rejected.pop(path, None) is not None
        if old is not None and old.policy.sha256 == policy.sha256:
            if was_rejected:  # the broken edit was undone: say the file is good again
                changes.append(Change("policy.loaded", {
                    "policy": policy.name, "file": str(path), "sha256": policy.sha256,
                    "previous_sha256": old.policy.sha256, "unchanged": True,
                    "rules": [r.name for r in policy.rules],
                }))
            return changes  # otherwise saved without changes (editors do that): nothing to say
        self.by_name[policy.name] = Loaded(policy, now)
        self._name_of_file[path] = policy.name
        changes.append(Change("policy.loaded", {
            "policy": policy.name, "file": str(path), "sha256": policy.sha256,
            "previous_sha256": old.policy.sha256 if old else None,
            "rules": [r.name for r in policy.rules],
        }))
        return changes

    def _reject(self, path: Path, errors: list[str]) -> Change:
        self.rejected[path] = errors
        kept = self._name_of_file.get(path)
        return Change("policy.rejected", {
            "file": str(path), "errors": errors, "kept": kept,
            "action": f"policy {kept!r} stays in force as it was" if kept else "no policy loaded from this file",
        })

    def _removed(self, path: Path) -> list[Change]:
        self.rejected.pop(path, None)
        name = self._name_of_file.pop(path, None)
        if name is None:
            return []
        self.by_name.pop(name, None)
        return [Change("policy.removed", {"policy": name, "file": str(path),
                                          "action": "jobs already running under it keep it until they end"})]

    def describe(self) -> dict[str, Any]:
        """For `trainguard policy show`."""
        return {
            "directory": str(self.directory),
            "policies": [
                {
                    "name": name,
                    "file": loaded.policy.source,
                    "sha256": loaded.policy.sha256,
                    "loaded_at": loaded.loaded_at,
                    "description": loaded.policy.description,
                    "preferred_pool": loaded.policy.preferred_pool,
                    "pools": {p.name: p.accelerator for p in loaded.policy.pools.values()},
                    "rules": [{"name": r.name, "action": r.then.action.value, "line": r.line} for r in loaded.policy.rules],
                }
                for name, loaded in sorted(self.by_name.items())
            ],
            "rejected": [{"file": str(f), "errors": e} for f, e in sorted(self.rejected.items())],
        }
