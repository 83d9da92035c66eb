"""Control verbs: what `trainguard status`, `inject`, ... ask the daemon.

One class per verb, registered by name. Each declares its parameters as a typed struct
(validated before it runs), and its docstring is the verb's documentation. `dispatch` is
the one place a request becomes an answer; a verb signals failure by raising `CtlError`
with a human sentence and a stable code, which the daemon returns as an error reply.
A verb either answers at once or returns `SendCommand`, and the daemon replies when the
agent's Result arrives (or the command times out).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Protocol

import msgspec

from supervisor.core.badframes import BadFrameCounter
from supervisor.core.jobs import job_view
from supervisor.core.jobspec import JobSpec
from supervisor.core.nodes import NodeTable
from supervisor.core.scheduler import JobError, JobOutcome, Jobs
from supervisor.core.statusrows import StatusRows
from supervisor.policy.directory import PolicyDirectory
from supervisor.shared import __version__
from supervisor.shared.clock import Instant
from supervisor.shared.protocol import (
    JOB_NAME_PATTERN,
    AnyCommandArgs,
    ChipIndex,
    CtlRequest,
    InjectArgs,
    NodeId,
    Seconds,
)
from supervisor.shared.vocab import Fault, NodeState


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

    jobs: Jobs
    event_log: Any
    status_rows: StatusRows

    def forget(self, node: str) -> bool: ...

    def drain(self, node: str, reason: str | None, now: Instant) -> Any: ...

STATUS_SCHEMA = 1


class CtlError(Exception):
    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SendCommand:
    node: str
    args: AnyCommandArgs


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


#: A status reply holds at most this many nodes, and at most STATUS_PAGE_BYTES of them
#: (a page of 1,000 eight-chip nodes is about 2.4 MB); `status --json` asks page after
#: page, each a turn of the daemon's loop: 500 a page made 20 round trips of 10,000
#: nodes, each waiting for a batch of heartbeats on a busy daemon.
STATUS_PAGE_LIMIT = 1000
#: The nodes of one page in bytes (encoded as sent), so that nodes with many chips still
#: leave a page inside the CLI's MAX_REPLY_BYTES (4 MiB) with room for the jobs. A page
#: holds one node at least.
STATUS_PAGE_BYTES = 3 * 1024 * 1024
#: Nodes lost or left longer ago than this leave the default view (`--all` shows them).
STATUS_GONE_AFTER = 3600.0


class _StatusParams(msgspec.Struct, forbid_unknown_fields=True):
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=0, le=STATUS_PAGE_LIMIT)] = STATUS_PAGE_LIMIT
    all: bool = False


@_register
class Status(Verb):
    """The cluster as the daemon sees it: nodes with liveness, chips and host health,
    last heartbeat age; jobs. The shape is documented in README.md ("status --json").
    Nodes come in pages (`offset`, `limit`; `next_offset` is null on the last page);
    nodes lost or left over an hour ago are left out unless `all` is set. The summary
    always counts every node."""

    name = "status"
    Params = _StatusParams

    def execute(self, cluster: "ClusterView", params: _StatusParams, now: Instant) -> Any:
        records, states, chip_health = cluster.nodes.census()
        if params.all or not (states[NodeState.LOST.value] or states[NodeState.LEFT.value]):
            shown = records
        else:
            shown = [r for r in records if r.state not in (NodeState.LOST, NodeState.LEFT)
                     or now.wall - r.state_since <= STATUS_GONE_AFTER]
        # Each node as the bytes of its StatusNode (`StatusRows`), put into the reply as
        # they are.
        page: list[msgspec.Raw] = []
        size = 0
        version = cluster.nodes.placement_version
        for record in shown[params.offset:params.offset + params.limit]:
            row = cluster.status_rows.row(record, round(cluster.nodes.seen_age(record.node, now), 3), version)
            size += len(row)
            if page and size > STATUS_PAGE_BYTES:
                break
            page.append(msgspec.Raw(row))
        end = params.offset + len(page)
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
            "summary": {"nodes": len(records), "states": dict(states), "chips": dict(chip_health)},
            "nodes": page,
            "page": {"offset": params.offset, "nodes_in_view": len(shown), "hidden_gone": len(records) - len(shown),
                     "next_offset": end if end < len(shown) else None},
            "jobs": [job_view(r, now.wall) for r in cluster.jobs.live()],
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


def _known_node(cluster: "ClusterView", node: str) -> Any:
    record = cluster.nodes.get(node)
    if record is None:
        names = [r.node for r in cluster.nodes.records()]
        known = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") if names else "none"
        raise CtlError(f"unknown node {node!r}; known nodes: {known}", "unknown_node")
    return record


def _up_node(cluster: "ClusterView", node: str) -> Any:
    record = _known_node(cluster, node)
    if record.state is not NodeState.UP:
        raise CtlError(f"node {node!r} is {record.state.value}, not up", "node_not_up")
    return record


class _InjectParams(msgspec.Struct, forbid_unknown_fields=True):
    node: NodeId
    fault: Fault
    # Bounded here, not only in the CLI: a hand-written request with a count of 10**23
    # would otherwise reach the agent's command encoder (msgpack stops at 2**64).
    chip: ChipIndex = 0
    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1


@_register
class Inject(Verb):
    """Inject a fault into a simulated node (sim-ascend / sim-nvidia). The agent acts it
    out where the real fault would show itself; for chip faults, its sim probe reports the
    new health within one probe interval."""

    name = "inject"
    Params = _InjectParams

    def execute(self, cluster: "ClusterView", params: _InjectParams, now: Instant) -> Any:
        record = _known_node(cluster, params.node)
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
        return SendCommand(params.node, InjectArgs(fault=params.fault, chip=params.chip, count=params.count))


class _ForgetParams(msgspec.Struct, forbid_unknown_fields=True):
    node: NodeId


@_register
class NodeForget(Verb):
    """Remove a node that is not up (lost, left or pending) from the daemon's table and
    store: for decommissioned machines. A node that registers again is simply new."""

    name = "node_forget"
    Params = _ForgetParams

    def execute(self, cluster: "ClusterView", params: _ForgetParams, now: Instant) -> Any:
        record = _known_node(cluster, params.node)
        if record.state is NodeState.UP:
            raise CtlError(f"node {params.node!r} is up; stop its agent first (it would register again)", "node_up")
        cluster.forget(params.node)
        return {"node": params.node, "forgotten": True, "was": record.state.value}


# --- jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Acted:
    """A verb that changed the daemon's state: its answer, and what the daemon must
    commit and send (the job outcome) before the answer goes out."""

    result: Any
    outcome: JobOutcome


def _jobs_call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except JobError as exc:
        raise CtlError(str(exc), exc.code) from None


class _SubmitParams(msgspec.Struct, forbid_unknown_fields=True):
    spec: JobSpec


@_register
class JobSubmit(Verb):
    """Submit a job (the job file, parsed and with its paths resolved by the CLI). It
    starts on its policy's preferred pool; answers with the job's id."""

    name = "job_submit"
    Params = _SubmitParams

    def execute(self, cluster: "ClusterView", params: _SubmitParams, now: Instant) -> Any:
        spec = params.spec
        if not re.match(JOB_NAME_PATTERN, spec.name):
            raise CtlError(f"job name {spec.name[:80]!r}: use lower-case letters, digits, '.', '_' and '-', starting "
                           "with a letter or digit, at most 63", "bad_request")
        if not spec.command:
            raise CtlError("a job needs a command", "bad_request")
        if cluster.policies is None:
            raise CtlError("this daemon was started without --policy-dir: no policy to run a job under", "no_policies")
        outcome = _jobs_call(cluster.jobs.submit, spec, now)
        job = next(iter(outcome.records))
        return Acted({"job": job}, outcome)


class _JobParams(msgspec.Struct, forbid_unknown_fields=True):
    job: Annotated[str, msgspec.Meta(max_length=128)]


@_register
class JobShow(Verb):
    """One job in the stable form of `job show --json` (README)."""

    name = "job_show"
    Params = _JobParams

    def execute(self, cluster: "ClusterView", params: _JobParams, now: Instant) -> Any:
        return job_view(_jobs_call(cluster.jobs.get, params.job), now.wall)


@_register
class JobList(Verb):
    """Every job the daemon knows, newest last, in the form of `job show`."""

    name = "job_list"
    Params = _NoParams

    def execute(self, cluster: "ClusterView", params: _NoParams, now: Instant) -> Any:
        records = sorted(cluster.jobs.records.values(), key=lambda r: r.submitted_at)
        return {"jobs": [job_view(r, now.wall) for r in records[-1000:]]}


class _JobStopParams(msgspec.Struct, forbid_unknown_fields=True):
    job: Annotated[str, msgspec.Meta(max_length=128)]
    grace: Seconds = 60.0


@_register
class JobStop(Verb):
    """Stop a job: SIGTERM to its ranks (they agree on a final checkpoint), SIGKILL after
    `grace`; the job ends `stopped`."""

    name = "job_stop"
    Params = _JobStopParams

    def execute(self, cluster: "ClusterView", params: _JobStopParams, now: Instant) -> Any:
        # By id: a job stopped at once (pending) is no longer found by its name.
        record = _jobs_call(cluster.jobs.get, params.job)
        outcome = _jobs_call(cluster.jobs.stop, record.id, params.grace, now)
        return Acted({"job": record.id, "state": record.state.value}, outcome)


class _JobFailoverParams(msgspec.Struct, forbid_unknown_fields=True):
    job: Annotated[str, msgspec.Meta(max_length=128)]
    to: Annotated[str, msgspec.Meta(max_length=64)]


@_register
class JobFailover(Verb):
    """An operator's failover to another pool, through the same path as a policy's."""

    name = "job_failover"
    Params = _JobFailoverParams

    def execute(self, cluster: "ClusterView", params: _JobFailoverParams, now: Instant) -> Any:
        outcome = _jobs_call(cluster.jobs.failover, params.job, params.to, now)
        record = cluster.jobs.get(params.job)
        return Acted({"job": record.id, "state": record.state.value, "to": params.to}, outcome)


class _DrainParams(msgspec.Struct, forbid_unknown_fields=True):
    node: NodeId
    reason: Annotated[str, msgspec.Meta(max_length=256)] = "drained by an operator"


@_register
class NodeDrain(Verb):
    """Drain a node: it takes no new ranks; a job running on it is moved off by a restart."""

    name = "node_drain"
    Params = _DrainParams

    def execute(self, cluster: "ClusterView", params: _DrainParams, now: Instant) -> Any:
        _known_node(cluster, params.node)
        out = cluster.drain(params.node, params.reason, now)
        return ActedCluster({"node": params.node, "drained": params.reason}, out)


@_register
class NodeUndrain(Verb):
    """Undrain a node (and its excluded chips): it takes ranks again."""

    name = "node_undrain"
    Params = _ForgetParams

    def execute(self, cluster: "ClusterView", params: _ForgetParams, now: Instant) -> Any:
        _known_node(cluster, params.node)
        out = cluster.drain(params.node, None, now)
        return ActedCluster({"node": params.node, "drained": None}, out)


@dataclass(frozen=True)
class ActedCluster:
    """A verb whose effects are already a cluster Outcome (drains)."""

    result: Any
    outcome: Any


class _EventsParams(msgspec.Struct, forbid_unknown_fields=True):
    job: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    node: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    since: Annotated[float, msgspec.Meta(ge=0)] | None = None
    after: Annotated[int, msgspec.Meta(ge=0)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 1000


@_register
class Events(Verb):
    """Events from the daemon's store, oldest first, with the same names and fields as
    its log; filter by job, node, time (`since`, Unix seconds) or sequence (`after`)."""

    name = "events"
    Params = _EventsParams

    def execute(self, cluster: "ClusterView", params: _EventsParams, now: Instant) -> Any:
        if cluster.event_log is None:
            raise CtlError("this daemon keeps no event store", "no_store")
        job = params.job
        if job is not None:
            try:
                job = cluster.jobs.get(job).id
            except JobError:
                pass  # an ended job of another daemon's time: match the id as given
        return {"events": cluster.event_log(job=job, node=params.node, since=params.since, after=params.after,
                                            limit=params.limit)}
