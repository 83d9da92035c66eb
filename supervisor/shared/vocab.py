"""The shared vocabulary: accelerators, health levels, node states, signals, faults.

Everything else in trainguard speaks these words, on the wire, in the store and in the
logs. This module imports nothing of ours, so both the daemon (`supervisor`) and the node
agents (`agents`) can depend on it without depending on each other.
"""

from __future__ import annotations

import enum


class Accelerator(str, enum.Enum):
    """What a node trains on. The `sim-*` kinds train on the CPU while reporting the
    simulated accelerator; their chips are faulted with `trainguard inject`."""

    ASCEND = "ascend"
    NVIDIA = "nvidia"
    CPU = "cpu"
    SIM_ASCEND = "sim-ascend"
    SIM_NVIDIA = "sim-nvidia"

    @property
    def simulated(self) -> bool:
        return self in (Accelerator.SIM_ASCEND, Accelerator.SIM_NVIDIA)

    @property
    def family(self) -> str:
        """The vendor family a pool is made of: a sim-ascend node counts as ascend."""
        return self.value.removeprefix("sim-")

    @classmethod
    def families(cls) -> tuple[str, ...]:
        """The families a pool can be made of: ascend, nvidia, cpu."""
        return tuple(dict.fromkeys(a.family for a in cls))


class Health(str, enum.Enum):
    """Health of one chip or of a host, worst last. `unknown` means the probe could not
    read it (tool missing, timed out, unparseable): it is never reported as `ok`."""

    OK = "ok"
    WARNING = "warning"
    ALARM = "alarm"
    CRITICAL = "critical"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        # unknown sorts between warning and alarm: a blind probe is a concern, not a
        # proven chip failure.
        return _HEALTH_RANK[self]

    @classmethod
    def worst(cls, levels: "list[Health] | tuple[Health, ...]") -> "Health":
        return max(levels, key=_HEALTH_RANK.__getitem__, default=cls.OK)  # a lambda: twice the time


_HEALTH_RANK = {
    Health.OK: 0,
    Health.WARNING: 1,
    Health.UNKNOWN: 2,
    Health.ALARM: 3,
    Health.CRITICAL: 4,
}


class NodeState(str, enum.Enum):
    """Liveness of a node as the daemon sees it.

    pending → up: the node registered (or re-registered after a daemon restart).
    up → lost: no heartbeat for `heartbeat_timeout`.
    lost → up: the node registered or heartbeated again (`node.recovered`).
    pending → lost: a node known from the store did not come back within
    `heartbeat_timeout` of the daemon starting.
    up → left: its agent said goodbye (stopped on purpose); no node_lost signal.
    left → up: the agent registered again.
    """

    PENDING = "pending"
    UP = "up"
    LOST = "lost"
    LEFT = "left"


class Signal(str, enum.Enum):
    """The fault taxonomy (DESIGN.md, "Signals")."""

    CRASH = "crash"
    HANG = "hang"
    INTERCONNECT_TIMEOUT = "interconnect_timeout"
    CHIP_ERROR = "chip_error"
    CHIP_DEGRADED = "chip_degraded"
    OOM = "oom"
    NETWORK = "network"
    NODE_LOST = "node_lost"
    STRAGGLER = "straggler"
    #: A restart or failover that cannot be placed: too few healthy, undrained nodes.
    NO_CAPACITY = "no_capacity"
    USER_ERROR = "user_error"


#: Bounds of `trainguard inject`'s numbers, checked by the CLI and again by the daemon's
#: inject verb: a chip index (a node has at most 4096 chips, as the agent's `chips`
#: setting allows) and a count of ECC errors to add.
MAX_CHIP_INDEX = 4095
MAX_INJECT_COUNT = 1_000_000


class Fault(str, enum.Enum):
    """What `trainguard inject` can do to a simulated node.

    The health levels set one chip's reported health directly; `ecc` adds uncorrectable
    ECC errors to a chip; `chip_error` / `chip_degraded` are the taxonomy's names for a
    chip that reports critical / warning with a vendor error code; `crash` SIGKILLs the
    training rank that uses the chip. `hang` and `interconnect_timeout` mark the chip so
    that the rank on it acts them out (the runtime, on sim accelerators only): it stops
    stepping, or prints the vendor's timeout message and fails; after `chip_error` the
    rank also fails with the vendor's device-error text.
    """

    OK = "ok"
    WARNING = "warning"
    ALARM = "alarm"
    CRITICAL = "critical"
    ECC = "ecc"
    CHIP_ERROR = "chip_error"
    CHIP_DEGRADED = "chip_degraded"
    CRASH = "crash"
    HANG = "hang"
    INTERCONNECT_TIMEOUT = "interconnect_timeout"

    @property
    def needs_rank(self) -> bool:
        """Acted out on the training rank that uses the chip, not on the chip."""
        return self is Fault.CRASH


class Severity(str, enum.Enum):
    """How bad one signal is, least first. Policies can filter on a minimum severity."""

    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


#: The severity a signal carries unless its source says otherwise.
DEFAULT_SEVERITY = {
    Signal.CHIP_DEGRADED: Severity.WARNING,
    Signal.STRAGGLER: Severity.WARNING,
    Signal.CHIP_ERROR: Severity.CRITICAL,
}


def default_severity(signal: Signal) -> Severity:
    return DEFAULT_SEVERITY.get(signal, Severity.ERROR)


class Action(str, enum.Enum):
    """What a policy decision asks for.

    restart: stop the job's ranks and start them again in the same pool from the latest
      checkpoint (optionally without the faulty node or chip).
    checkpoint: take a checkpoint now; the job keeps running.
    exclude: take the faulty node (or chip) out of the job's placement, then restart.
    failover: checkpoint if possible, stop, and restart the job in another pool.
    stop: stop the job for good (STOPPED); restarting would not help.
    alert: tell a human (a `policy.alert` event); the job is not touched.
    fail: the job is FAILED (a limit was reached); nothing more is tried.
    none: no rule matched; the job continues as it is.
    """

    RESTART = "restart"
    CHECKPOINT = "checkpoint"
    EXCLUDE = "exclude"
    FAILOVER = "failover"
    STOP = "stop"
    ALERT = "alert"
    FAIL = "fail"
    NONE = "none"
