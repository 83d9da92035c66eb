"""Control verbs: what `trainguard status`, `inject`, ... ask the daemon.

One class per verb, registered by name. Each declares its parameters as a typed struct
(validated before it runs), and its docstring is the verb's documentation. `dispatch` is
the one place a request becomes an answer; a verb signals failure by raising `CtlError`
with a human sentence and a stable code, which the daemon returns as an error reply.
A verb either answers at once or returns `SendCommand`, and the daemon replies when the
agent's Result arrives (or the command times out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Protocol

import msgspec

from supervisor.core.badframes import BadFrameCounter
from supervisor.core.nodes import NodeTable
from supervisor.policy.directory import PolicyDirectory
from supervisor.shared import __version__
from supervisor.shared.clock import Instant
from supervisor.shared.protocol import CommandKind, CtlRequest
from supervisor.shared.vocab import MAX_CHIP_INDEX, MAX_INJECT_COUNT, Fault, Health, NodeState


class ClusterView(Protocol):
    """What the verbs may see of the daemon's state: a narrow view, so that this module
    does not depend on `cluster` (which dispatches to it)."""

    instance: str
    started: Instant
    nodes: NodeTable
    bad_frames: BadFrameCounter
    policies: PolicyDirectory | None

    @property
    def heartbeat_timeout(self) -> float: ...

    @property
    def heartbeat_interval(self) -> float: ...

STATUS_SCHEMA = 1


class CtlError(Exception):
    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SendCommand:
    node: str
    kind: CommandKind
    args: dict[str, Any]


class Verb:
    name: ClassVar[str]
    Params: ClassVar[type[msgspec.Struct]]

    def execute(self, cluster: "ClusterView", params: Any, now: Instant) -> Any:
        raise NotImplementedError


VERBS: dict[str, Verb] = {}


def _register(cls: type[Verb]) -> type[Verb]:
    VERBS[cls.name] = cls()
    return cls


def dispatch(cluster: "ClusterView", req: CtlRequest, now: Instant) -> Any:
    verb = VERBS.get(req.verb)
    if verb is None:
        known = ", ".join(sorted(VERBS))
        raise CtlError(f"unknown verb {req.verb!r}; this daemon knows: {known}", "unknown_verb")
    try:
        params = msgspec.convert(req.args, verb.Params)
    except msgspec.ValidationError as exc:
        raise CtlError(f"{req.verb}: {exc}", "bad_request") from None
    return verb.execute(cluster, params, now)


class _NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


@_register
class Ping(Verb):
    """Is the daemon serving? Answers with its version, instance and uptime."""

    name = "ping"
    Params = _NoParams

    def execute(self, cluster: "ClusterView", params: _NoParams, now: Instant) -> Any:
        return {
            "version": __version__,
            "instance": cluster.instance,
            "uptime_s": round(now.mono - cluster.started.mono, 3),
        }


@_register
class Status(Verb):
    """The cluster as the daemon sees it: nodes with liveness, chips and host health,
    last heartbeat age; jobs. The shape is documented in README.md ("status --json")."""

    name = "status"
    Params = _NoParams

    def execute(self, cluster: "ClusterView", params: _NoParams, now: Instant) -> Any:
        nodes = []
        chip_health: dict[str, int] = {h.value: 0 for h in Health}
        for record in cluster.nodes.records():
            for chip in record.chips:
                chip_health[chip.health.value] += 1
            nodes.append(
                {
                    "node": record.node,
                    "state": record.state.value,
                    "state_since": record.state_since,
                    "health": record.health.value,
                    "accelerator": record.accelerator.value,
                    "hostname": record.hostname,
                    "agent_version": record.agent_version,
                    "agent_pid": record.pid,
                    "registered_at": record.registered_at,
                    "last_heartbeat": record.last_seen,
                    "last_heartbeat_age_s": round(cluster.nodes.seen_age(record.node, now), 3),
                    "chips": [msgspec.to_builtins(c) for c in record.chips],
                    "host": msgspec.to_builtins(record.host) if record.host else None,
                    "running": [msgspec.to_builtins(r) for r in record.running],
                }
            )
        states = {s.value: 0 for s in NodeState}
        for n in nodes:
            states[n["state"]] += 1
        return {
            "schema": STATUS_SCHEMA,
            "daemon": {
                "version": __version__,
                "instance": cluster.instance,
                "started_at": cluster.started.wall,
                "uptime_s": round(now.mono - cluster.started.mono, 3),
                "heartbeat_timeout_s": cluster.heartbeat_timeout,
                "heartbeat_interval_s": cluster.heartbeat_interval,
                "policy_dir": str(cluster.policies.directory) if cluster.policies else None,
                "policies": sorted(cluster.policies.by_name) if cluster.policies else [],
                "policies_rejected": len(cluster.policies.rejected) if cluster.policies else 0,
                "bad_frames": {
                    "total": cluster.bad_frames.total,
                    "by_reason": dict(cluster.bad_frames.by_reason),
                },
            },
            "summary": {"nodes": len(nodes), "states": states, "chips": chip_health},
            "nodes": nodes,
            "jobs": [],
        }


@_register
class Policies(Verb):
    """The policies the daemon has loaded from its policy directory (name, file, sha256,
    rules), and the files it refused with their errors."""

    name = "policies"
    Params = _NoParams

    def execute(self, cluster: "ClusterView", params: _NoParams, now: Instant) -> Any:
        if cluster.policies is None:
            raise CtlError("this daemon was started without --policy-dir: no policies loaded", "no_policies")
        return cluster.policies.describe()


def _up_node(cluster: "ClusterView", node: str) -> Any:
    record = cluster.nodes.get(node)
    if record is None:
        known = ", ".join(r.node for r in cluster.nodes.records()) or "none"
        raise CtlError(f"unknown node {node!r}; known nodes: {known}", "unknown_node")
    if record.state is not NodeState.UP:
        raise CtlError(f"node {node!r} is {record.state.value}, not up", "node_not_up")
    return record


class _LaunchParams(msgspec.Struct, forbid_unknown_fields=True):
    node: str
    job: str
    argv: list[str]
    nproc: int = 1
    ckpt_dir: str | None = None
    cwd: str | None = None
    env: dict[str, str] = {}


@_register
class Launch(Verb):
    """Start `nproc` ranks of a command on one node, as a single-node job: the agent
    gives them a torchrun environment and their chips, watches them (crash, hang, log
    faults) and reports what it sees as `signal.*` events. (The job lifecycle across
    nodes, with restarts and failover, builds on this.)"""

    name = "launch"
    Params = _LaunchParams

    def execute(self, cluster: "ClusterView", params: _LaunchParams, now: Instant) -> Any:
        record = _up_node(cluster, params.node)
        if not params.argv:
            raise CtlError("launch needs a command to run", "bad_request")
        if params.nproc < 1 or (record.chips and params.nproc > len(record.chips)):
            raise CtlError(f"node {params.node!r} has {len(record.chips)} chips; cannot run {params.nproc} ranks", "bad_request")
        if any(r.job == params.job for r in record.running):
            raise CtlError(f"job {params.job!r} already runs on node {params.node!r}", "busy")
        args = msgspec.to_builtins(params)
        del args["node"]
        return SendCommand(params.node, CommandKind.LAUNCH, args)


class _StopParams(msgspec.Struct, forbid_unknown_fields=True):
    node: str
    job: str
    grace: float = 30.0


@_register
class Stop(Verb):
    """Stop a job's ranks on a node: SIGTERM (the runtime takes a final checkpoint),
    then SIGKILL of whatever is left after `grace` seconds."""

    name = "stop"
    Params = _StopParams

    def execute(self, cluster: "ClusterView", params: _StopParams, now: Instant) -> Any:
        _up_node(cluster, params.node)
        return SendCommand(params.node, CommandKind.STOP, {"job": params.job, "grace": params.grace})


class _InjectParams(msgspec.Struct, forbid_unknown_fields=True):
    node: str
    fault: Fault
    # Bounded here, not only in the CLI: a hand-written request with a count of 10**23
    # would otherwise reach the agent's command encoder (msgpack stops at 2**64).
    chip: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHIP_INDEX)] = 0
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_INJECT_COUNT)] = 1


@_register
class Inject(Verb):
    """Inject a fault into a simulated node (sim-ascend / sim-nvidia). The agent acts it
    out where the real fault would show itself; for chip faults, its sim probe reports the
    new health within one probe interval."""

    name = "inject"
    Params = _InjectParams

    def execute(self, cluster: "ClusterView", params: _InjectParams, now: Instant) -> Any:
        record = cluster.nodes.get(params.node)
        if record is None:
            known = ", ".join(r.node for r in cluster.nodes.records()) or "none"
            raise CtlError(f"unknown node {params.node!r}; known nodes: {known}", "unknown_node")
        if record.state is not NodeState.UP:
            raise CtlError(
                f"node {params.node!r} is {record.state.value}, not up: nothing to inject into",
                "node_not_up",
            )
        if not record.accelerator.simulated:
            raise CtlError(
                f"node {params.node!r} runs on {record.accelerator.value}; faults can only be "
                "injected into sim-ascend / sim-nvidia nodes",
                "not_simulated",
            )
        if not 0 <= params.chip < len(record.chips):
            raise CtlError(
                f"node {params.node!r} has chips 0..{len(record.chips) - 1}, not {params.chip}",
                "bad_request",
            )
        if params.count < 1:
            raise CtlError(f"count must be at least 1, got {params.count}", "bad_request")
        return SendCommand(
            params.node,
            CommandKind.INJECT,
            {"fault": params.fault.value, "chip": params.chip, "count": params.count},
        )
