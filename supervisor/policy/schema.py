"""The typed policy model. `loader.py` builds it from YAML; `engine.py` runs it.

Frozen dataclasses: a loaded policy never changes; a reload builds a new one and swaps it
in whole. Every rule and condition keeps the line it came from, so a decision can point
an operator at the YAML that made it. policies/README.md documents every key.
"""

from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass, field
from typing import Union

from supervisor.shared import defaults as d
from supervisor.shared.durations import format_window as _fmt
from supervisor.shared.vocab import Accelerator, Action, Severity, Signal

POLICY_VERSION = 1


class Per(str, enum.Enum):
    """What a condition counts separately: the whole job, each node, or each chip."""

    JOB = "job"
    NODE = "node"
    CHIP = "chip"


class ExcludeTarget(str, enum.Enum):
    NONE = "none"
    NODE = "node"
    CHIP = "chip"


@dataclass(frozen=True)
class Pool:
    name: str
    accelerator: str  # an accelerator family: ascend, nvidia or cpu
    min_healthy_nodes: int = 1


@dataclass(frozen=True)
class Detect:
    heartbeat_timeout: float = d.DEFAULT_HEARTBEAT_TIMEOUT
    hang_timeout: float = d.DEFAULT_HANG_TIMEOUT
    checkpoint_hang_timeout: float = d.DEFAULT_CHECKPOINT_HANG_TIMEOUT
    eval_hang_timeout: float = d.DEFAULT_EVAL_HANG_TIMEOUT
    probe_interval: float = d.DEFAULT_PROBE_INTERVAL


@dataclass(frozen=True)
class CheckpointPolicy:
    every: float | None = 600.0
    before_failover: bool = True
    before_failover_timeout: float = 120.0
    keep: int = 3


@dataclass(frozen=True)
class Leaf:
    """Holds when at least `count` matching signals arrived within `within` seconds
    (ever, when None), counted per job, node or chip."""

    signals: frozenset[Signal]
    pools: frozenset[str] | None = None
    nodes: tuple[str, ...] | None = None  # fnmatch globs
    min_severity: Severity | None = None
    count: int = 1
    within: float | None = None
    per: Per = Per.JOB
    line: int = 0

    def describe(self) -> str:
        parts = [f"{'|'.join(sorted(s.value for s in self.signals))}"]
        if self.pools:
            parts.append(f"pool={'|'.join(sorted(self.pools))}")
        if self.nodes:
            parts.append(f"node={'|'.join(self.nodes)}")
        if self.min_severity:
            parts.append(f"severity>={self.min_severity.value}")
        window = f" within {_fmt(self.within)}" if self.within is not None else ""
        per = f" per {self.per.value}" if self.per is not Per.JOB else ""
        return f"{' '.join(parts)}{window}{per}"

    def matches_node(self, node: str | None) -> bool:
        if self.nodes is None:
            return True
        return node is not None and any(fnmatch.fnmatchcase(node, g) for g in self.nodes)


@dataclass(frozen=True)
class AnyOf:
    children: tuple["Condition", ...]
    line: int = 0


@dataclass(frozen=True)
class AllOf:
    children: tuple["Condition", ...]
    line: int = 0


Condition = Union[Leaf, AnyOf, AllOf]


def leaves(condition: Condition) -> list[Leaf]:
    if isinstance(condition, Leaf):
        return [condition]
    return [leaf for child in condition.children for leaf in leaves(child)]


@dataclass(frozen=True)
class Then:
    action: Action
    to: str | None = None  # failover target pool
    exclude: ExcludeTarget = ExcludeTarget.NONE
    message: str | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    when: Condition
    then: Then
    line: int = 0


@dataclass(frozen=True)
class Limits:
    max_restarts: int = 10
    within: float = 3600.0
    failover_cooldown: float = 3600.0


@dataclass(frozen=True)
class Failback:
    enabled: bool = False
    after: float = 7200.0


@dataclass(frozen=True)
class Policy:
    name: str
    pools: dict[str, Pool]
    preferred_pool: str
    rules: tuple[Rule, ...]
    detect: Detect = field(default_factory=Detect)
    checkpoint: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    limits: Limits = field(default_factory=Limits)
    failback: Failback = field(default_factory=Failback)
    description: str = ""
    version: int = POLICY_VERSION
    source: str = ""  # the file it was loaded from
    sha256: str = ""  # of that file's bytes

    def pool_for_accelerator(self, accelerator: str | None) -> str | None:
        """The pool made of this accelerator family (sim-ascend counts as ascend), if one."""
        if accelerator is None:
            return None
        try:
            family = Accelerator(accelerator).family
        except ValueError:
            family = accelerator
        matches = [p.name for p in self.pools.values() if p.accelerator == family]
        return matches[0] if len(matches) == 1 else None
