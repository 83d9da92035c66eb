"""The probe interface: something that reads chip or host health on this node.

Every probe answers with values, never raises for a tool problem: a probe that could not
read reports `unknown` health with the reason ("a blind watcher must not look healthy").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from supervisor.shared.protocol import ChipStatus, HostStatus
from supervisor.shared.vocab import Health, Signal

#: The reason a probe gives for a chip whose own network link is down.
LINK_DOWN_REASON = "RoCE link down (hccn_tool)"

_SIGNAL_FOR_HEALTH = {
    Health.WARNING: Signal.CHIP_DEGRADED,
    Health.ALARM: Signal.CHIP_ERROR,
    Health.CRITICAL: Signal.CHIP_ERROR,
}


def chip_signal(chip: ChipStatus) -> Signal | None:
    """The fault a chip reading stands for: warning → chip_degraded, alarm/critical →
    chip_error, except a chip whose only fault is its own link being down: it computes, its network does not, so the fault is an interconnect one
    (`interconnect_timeout` on that chip), which the policies count apart from chip
    errors. ok and unknown stand for no fault."""
    if chip.link == "down" and chip.health is Health.ALARM and chip.reason == LINK_DOWN_REASON:
        return Signal.INTERCONNECT_TIMEOUT
    return _SIGNAL_FOR_HEALTH.get(chip.health)


class ChipProbe(Protocol):
    name: str

    def read(self) -> tuple[ChipStatus, ...]: ...


class HostProbe(Protocol):
    def read(self) -> HostStatus: ...


class NoChips:
    """A cpu node: nothing to probe."""

    name = "none"

    def read(self) -> tuple[ChipStatus, ...]:
        return ()


class UnavailableProbe:
    """An accelerator this agent cannot read: every chip is `unknown`, with the reason."""

    name = "unavailable"

    def __init__(self, chips: int, reason: str) -> None:
        self._chips = tuple(ChipStatus(index=i, health=Health.UNKNOWN, reason=reason) for i in range(chips))

    def read(self) -> tuple[ChipStatus, ...]:
        return self._chips


@dataclass(frozen=True)
class ChipChange:
    index: int
    before: ChipStatus | None
    after: ChipStatus | None

    @property
    def health_before(self) -> Health | None:
        return self.before.health if self.before else None

    @property
    def health_after(self) -> Health | None:
        return self.after.health if self.after else None


def chip_changes(before: tuple[ChipStatus, ...], after: tuple[ChipStatus, ...]) -> list[ChipChange]:
    """Chips whose health, error codes or uncorrectable ECC count changed between reads.
    Temperature and memory drift are not changes worth an event."""
    old = {c.index: c for c in before}
    new = {c.index: c for c in after}
    changes = []
    for index in sorted(old.keys() | new.keys()):
        a, b = old.get(index), new.get(index)
        if a is None or b is None:
            changes.append(ChipChange(index, a, b))
        elif (a.health, a.error_codes, a.ecc_uncorrectable, a.reason) != (
            b.health,
            b.error_codes,
            b.ecc_uncorrectable,
            b.reason,
        ):
            changes.append(ChipChange(index, a, b))
    return changes
