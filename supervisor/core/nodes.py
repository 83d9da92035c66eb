"""Node bookkeeping: who is in the cluster, what they run on, and whether they are alive.

Pure: every method takes the current `Instant` and returns the `NodeChange`s it caused
(the daemon logs and persists them). A heartbeat costs O(1): liveness is an insertion-
ordered dict of last-seen times, oldest first, so finding lost nodes touches only the nodes
that actually expired, whatever the size of the cluster.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgspec

from supervisor.shared.clock import Instant
from supervisor.shared.protocol import ChipStatus, Heartbeat, HostStatus, Register, RunningRank
from supervisor.shared.vocab import Accelerator, Health, NodeState


class NodeRecord(msgspec.Struct, kw_only=True, gc=False):
    """What the daemon knows of one node; persisted as-is (wall-clock times only).
    Untracked by the cycle collector, as the heartbeat's parts are (protocol.py): only
    scalars, strings, enums and tuples of untracked structs."""

    node: str
    accelerator: Accelerator
    state: NodeState
    chips: tuple[ChipStatus, ...] = ()
    host: HostStatus | None = None
    agent_version: str = ""
    agent_instance: str = ""
    hostname: str = ""
    pid: int = 0
    registered_at: float = 0.0
    last_seen: float = 0.0
    state_since: float = 0.0
    running: tuple[RunningRank, ...] = ()
    handler_failures: int = 0
    #: Where the node's ranks can be reached (MASTER_ADDR when it hosts rank 0).
    address: str = ""
    #: Why the node takes no new ranks (an operator's drain, a policy's exclusion), if so.
    drained: str | None = None
    #: Chips excluded by a policy (`exclude: faulty_chip`).
    drained_chips: tuple[int, ...] = ()

    @property
    def health(self) -> Health:
        """The worst chip health; a node without chips (cpu) is ok by its chips."""
        return Health.worst([c.health for c in self.chips])


@dataclass(frozen=True)
class NodeChange:
    """Something about a node the operator should hear of; `event` is the log name."""

    event: str
    node: str
    fields: dict[str, Any] = field(default_factory=dict)


class Unregistered(Exception):
    """A heartbeat from a node this daemon instance has not registered (it restarted,
    or the agent did): the agent must register again."""


class NodeTable:
    def __init__(self, heartbeat_timeout: float) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self._nodes: dict[str, NodeRecord] = {}
        # node -> monotonic last-seen, oldest first. Only pending/up nodes are here.
        self._seen: OrderedDict[str, float] = OrderedDict()
        # Nodes that registered with this daemon instance (not merely restored).
        self._session: dict[str, str] = {}
        #: Nodes whose record changed since the store last saved them.
        self.dirty: set[str] = set()
        #: Nodes heard from since the store last saved their last_seen time.
        self.heard: set[str] = set()
        #: Nodes whose readings (chip temperatures, host load, steps) changed since the
        #: store last saved their record: saved at most every `save_every` seconds, not
        #: with every heartbeat (see `due_saves`).
        self.refreshed: set[str] = set()
        #: Nodes with a heartbeat not yet saved, by the monotonic time of the first.
        self._unsaved: OrderedDict[str, float] = OrderedDict()
        #: Nodes forgotten since the store last saved (their rows must go).
        self.forgotten: set[str] = set()
        #: Overdue nodes the last `expire` held back for the daemon's own backlog.
        self.deferred = 0
        #: Bumped by every change to what placement reads of a node (its state, drain,
        #: accelerator, chips and their health), so a count over all nodes can be kept
        #: until it moves. Readings alone (temperature, power) leave it.
        self.placement_version = 0
        self._census: tuple[int, list[NodeRecord], dict[str, int], dict[str, int]] | None = None

    # --- queries -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, node: str) -> NodeRecord | None:
        return self._nodes.get(node)

    def records(self) -> list[NodeRecord]:
        return sorted(self._nodes.values(), key=lambda r: r.node)

    def census(self) -> tuple[list[NodeRecord], dict[str, int], dict[str, int]]:
        """(every record, by name; nodes by state; chips by health), counted again only
        when `placement_version` has moved: every change of a node's state or of a chip's
        health moves it, readings do not. A status of 10,000 nodes comes in 20 pages, and
        each counted 80,000 chips (most of a page's time on the daemon's loop). The lists
        are shared: do not change them."""
        if self._census is None or self._census[0] != self.placement_version:
            states = {s.value: 0 for s in NodeState}
            chips = {h.value: 0 for h in Health}
            records = self.records()
            for record in records:
                states[record.state.value] += 1
                for chip in record.chips:
                    chips[chip.health.value] += 1
            self._census = (self.placement_version, records, states, chips)
        return self._census[1], self._census[2], self._census[3]

    def seen_age(self, node: str, now: Instant) -> float:
        """Seconds since the node was last heard from (wall clock for restored nodes)."""
        record = self._nodes[node]
        return max(0.0, now.wall - record.last_seen)

    def overdue(self, now: float) -> int:
        """How many live nodes have not been heard from for heartbeat_timeout at monotonic
        `now` (walks only those)."""
        count = 0
        for mono in self._seen.values():
            if now < mono + self.heartbeat_timeout:
                break
            count += 1
        return count

    def next_deadline(self) -> float | None:
        """Monotonic time at which the oldest live node expires, if any."""
        for mono in self._seen.values():
            return mono + self.heartbeat_timeout
        return None

    # --- transitions ---------------------------------------------------------------

    def restore(self, records: list[NodeRecord], now: Instant) -> list[NodeChange]:
        """Load records saved by an earlier daemon. Nodes that were alive become
        `pending`: they get a full heartbeat_timeout from now to re-register."""
        changes = []
        self.placement_version += 1
        for record in records:
            if record.state not in (NodeState.LOST, NodeState.LEFT):
                record.state = NodeState.PENDING
                record.state_since = now.wall
                self._seen[record.node] = now.mono
            self._nodes[record.node] = record
        if records:
            changes.append(
                NodeChange(
                    "node.restored",
                    "*",
                    {
                        "nodes": len(records),
                        "pending": sum(r.state is NodeState.PENDING for r in records),
                        "lost": sum(r.state is NodeState.LOST for r in records),
                        "left": sum(r.state is NodeState.LEFT for r in records),
                    },
                )
            )
        return changes

    def register(self, msg: Register, now: Instant) -> list[NodeChange]:
        old = self._nodes.get(msg.node)
        record = NodeRecord(
            node=msg.node,
            accelerator=msg.accelerator,
            state=NodeState.UP,
            chips=msg.chips,
            host=msg.host,
            agent_version=msg.agent_version,
            agent_instance=msg.agent_instance,
            hostname=msg.hostname,
            pid=msg.pid,
            registered_at=now.wall,
            last_seen=now.wall,
            state_since=now.wall if old is None or old.state is not NodeState.UP else old.state_since,
            running=msg.running,
            address=msg.address or msg.hostname,
            # An operator's drain outlives the agent: it is the node's, not the process's.
            drained=old.drained if old is not None else None,
            drained_chips=old.drained_chips if old is not None else (),
        )
        self._nodes[msg.node] = record
        self._session[msg.node] = msg.agent_instance
        self._touch(msg.node, now)
        self.dirty.add(msg.node)
        self.placement_version += 1

        fields: dict[str, Any] = {
            "accelerator": msg.accelerator.value,
            "chips": len(msg.chips),
            "health": record.health.value,
            "hostname": msg.hostname,
            "agent_version": msg.agent_version,
            "agent_pid": msg.pid,
            "running_ranks": len(msg.running),
        }
        if old is None:
            fields["first_time"] = True
        else:
            fields["previous_state"] = old.state.value
            fields["agent_restarted"] = old.agent_instance != msg.agent_instance
            if old.accelerator is not msg.accelerator:
                fields["previous_accelerator"] = old.accelerator.value
        changes = [NodeChange("node.registered", msg.node, fields)]
        if old is not None and old.state is NodeState.LOST:
            changes.append(self._recovered(old, now))
        return changes

    def heartbeat(self, msg: Heartbeat, now: Instant) -> list[NodeChange]:
        """Record a heartbeat. Raises Unregistered when the agent must register first."""
        record = self._nodes.get(msg.node)
        if record is None or self._session.get(msg.node) != msg.agent_instance:
            raise Unregistered(msg.node)
        # A lost node left the session in expire(), so a registered node here is up.
        # A change of health, of the chips or of the ranks running is saved at the next
        # flush; new readings alone (temperatures, load, steps) within `due_saves`.
        if record.chips != msg.chips:
            if _placement(record.chips) != _placement(msg.chips):
                self.placement_version += 1
                self.dirty.add(msg.node)
            else:
                self.refreshed.add(msg.node)
        if record.host != msg.host:
            (self.dirty if record.host is None or record.host.health != msg.host.health else self.refreshed).add(msg.node)
        if record.running != msg.running:
            (self.dirty if _ranks(record.running) != _ranks(msg.running) else self.refreshed).add(msg.node)
        record.chips = msg.chips
        record.host = msg.host
        record.running = msg.running
        record.handler_failures = msg.handler_failures
        record.last_seen = now.wall
        self.heard.add(msg.node)
        if msg.node not in self._unsaved:
            self._unsaved[msg.node] = now.mono
        self._touch(msg.node, now)
        return []

    def due_saves(self, now: float, every: float, at_most: int) -> tuple[list[str], list[str]]:
        """Nodes whose heartbeats are due to be saved at monotonic time `now`: (those whose
        readings changed: the whole record; those only heard from: last_seen), each node
        at most once every `every` seconds, oldest first, at most `at_most` in all, so a
        flush of a large cluster costs about the same every second. Changes in `dirty` are
        not here: those are saved at once. Call `saved` with what was written."""
        records: list[str] = []
        seen: list[str] = []
        for node, first in self._unsaved.items():
            if now - first < every or len(records) + len(seen) >= at_most:
                break
            if node in self.refreshed:
                records.append(node)
            elif node in self.heard:
                seen.append(node)
            else:
                records.append(node)  # dropped from both meanwhile (written as dirty): nothing left to say
        return records, seen

    def saved(self, nodes: list[str]) -> None:
        """The store has written these nodes' records or last_seen times."""
        for node in nodes:
            self._unsaved.pop(node, None)
            self.refreshed.discard(node)
            self.heard.discard(node)

    def is_registered(self, node: str, agent_instance: str | None = None) -> bool:
        instance = self._session.get(node)
        return instance is not None and (agent_instance is None or instance == agent_instance)

    def update_chip(self, node: str, chip: ChipStatus) -> None:
        """Apply a chip reading that arrived in an event, ahead of the next heartbeat."""
        record = self._nodes[node]
        chips = list(record.chips)
        for i, existing in enumerate(chips):
            if existing.index == chip.index:
                chips[i] = chip
                break
        else:
            chips.append(chip)
            chips.sort(key=lambda c: c.index)
        record.chips = tuple(chips)
        self.dirty.add(node)
        self.placement_version += 1

    def expire(self, now: Instant, backlog_since: float | None = None) -> list[NodeChange]:
        """Mark every node not heard from for heartbeat_timeout as lost.

        `backlog_since`: the monotonic time the daemon last found its own agent queue empty,
        when frames are still waiting there unread (None when it is empty). A node that was
        not yet overdue then may have its heartbeat in that queue: it is not declared lost
        for the daemon's own backlog, but for at most one more heartbeat_timeout, so a node
        that is really gone is still found under a backlog that never ends. How many were
        held back is left in `deferred`."""
        changes = []
        self.deferred = 0
        timeout = self.heartbeat_timeout
        while self._seen:
            node, mono = next(iter(self._seen.items()))
            # Same arithmetic as next_deadline(), so expiring at that instant works.
            if now.mono < mono + timeout:
                break
            if backlog_since is not None and mono + timeout > backlog_since and now.mono < mono + 2 * timeout:
                # Oldest first: every node after this one was heard from later, so it is
                # either not overdue or held back for the same reason.
                self.deferred = self.overdue(now.mono)
                break
            silent_for = now.mono - mono
            del self._seen[node]
            self._session.pop(node, None)
            record = self._nodes[node]
            previous = record.state
            record.state = NodeState.LOST
            record.state_since = now.wall
            self.dirty.add(node)
            self.placement_version += 1
            changes.append(
                NodeChange(
                    "node.lost",
                    node,
                    {
                        "signal": "node_lost",
                        "previous_state": previous.value,
                        "silent_for_s": round(silent_for, 3),
                        "heartbeat_timeout_s": self.heartbeat_timeout,
                        "last_seen": record.last_seen,
                        "accelerator": record.accelerator.value,
                        "hostname": record.hostname,
                        "reason": (
                            "did not re-register after the daemon restarted"
                            if previous is NodeState.PENDING
                            else "no heartbeat within heartbeat_timeout"
                        ),
                    },
                )
            )
        return changes

    def leave(self, node: str, agent_instance: str, reason: str, now: Instant) -> list[NodeChange]:
        """The node's agent stopped on purpose: `left`, not lost. Only the registered
        instance may say so (a stale goodbye from an agent already replaced is ignored)."""
        record = self._nodes.get(node)
        if record is None or self._session.get(node) != agent_instance:
            return []
        self._seen.pop(node, None)
        self._session.pop(node, None)
        previous = record.state
        record.state = NodeState.LEFT
        record.state_since = now.wall
        record.running = ()
        self.dirty.add(node)
        self.placement_version += 1
        return [NodeChange("node.left", node, {"previous_state": previous.value, "reason": reason,
                                               "hostname": record.hostname})]

    def drain(self, node: str, reason: str | None, chip: int | None = None) -> NodeChange | None:
        """Drain (reason) or undrain (None) a node, or exclude one of its chips."""
        record = self._nodes.get(node)
        if record is None:
            return None
        self.placement_version += 1
        if chip is not None and reason is not None:
            if chip in record.drained_chips:
                return None
            record.drained_chips = tuple(sorted({*record.drained_chips, chip}))
            self.dirty.add(node)
            return NodeChange("node.chip_excluded", node, {"chip": chip, "reason": reason})
        if reason is None:
            if record.drained is None and not record.drained_chips:
                return None
            was, record.drained, record.drained_chips = record.drained, None, ()
            self.dirty.add(node)
            return NodeChange("node.undrained", node, {"was": was})
        if record.drained == reason:
            return None
        record.drained = reason
        self.dirty.add(node)
        return NodeChange("node.drained", node, {"reason": reason})

    def by_name(self) -> dict[str, NodeRecord]:
        return self._nodes

    def rearm(self, now: Instant) -> int:
        """Give every live node a full heartbeat_timeout from `now` (after the daemon's
        own stall). Returns how many nodes were re-armed."""
        for node in self._seen:
            self._seen[node] = now.mono
        return len(self._seen)

    def forget(self, node: str) -> bool:
        """Remove a node entirely (an operator decommissioned it)."""
        self._seen.pop(node, None)
        self._session.pop(node, None)
        self.dirty.discard(node)
        self.heard.discard(node)
        self.refreshed.discard(node)
        self._unsaved.pop(node, None)
        known = self._nodes.pop(node, None) is not None
        if known:
            self.forgotten.add(node)
            self.placement_version += 1
        return known

    # --- internals -----------------------------------------------------------------

    def _touch(self, node: str, now: Instant) -> None:
        self._seen[node] = now.mono
        self._seen.move_to_end(node)

    def _recovered(self, old: NodeRecord, now: Instant) -> NodeChange:
        return NodeChange(
            "node.recovered",
            old.node,
            {"down_for_s": round(max(0.0, now.wall - old.state_since), 3)},
        )


def _ranks(running: tuple[RunningRank, ...]) -> list[tuple[str, int, int, int]]:
    """Which ranks a node runs, without their progress."""
    return [(r.job, r.attempt, r.rank, r.pid) for r in running]


def _placement(chips: tuple[ChipStatus, ...]) -> list[tuple[int, Health]]:
    """What placement and pool health read of a node's chips."""
    return [(c.index, c.health) for c in chips]
