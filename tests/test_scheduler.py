"""The jobs scheduler (`supervisor/core/scheduler.py`), driven the way the cluster drives
it: node events, start results, heartbeats' running ranks and ticks, with literal times,
hand-built node records and the shipped default policy."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from supervisor.core.jobs import JobRecord, JobState
from supervisor.core.jobspec import JobSpec, PoolShape
from supervisor.core.nodes import NodeRecord
from supervisor.core.scheduler import JobError, JobOutcome, Jobs
from supervisor.policy.loader import load_bytes, load_file
from supervisor.policy.schema import Policy
from supervisor.policy.shipped import shipped_policy_dir
from supervisor.shared.clock import Instant
from supervisor.shared.protocol import ChipStatus, RunningRank
from supervisor.shared.vocab import Accelerator, Health, NodeState

DEFAULT = load_file(shipped_policy_dir() / "default.yaml")
WALL0 = 1_700_000_000.0


def at(t: float) -> Instant:
    return Instant(mono=1000.0 + t, wall=WALL0 + t)


def make_node(name: str, acc: Accelerator = Accelerator.ASCEND, chips: int = 1) -> NodeRecord:
    return NodeRecord(node=name, accelerator=acc, state=NodeState.UP, address=f"addr-{name}",
                      chips=tuple(ChipStatus(index=i, health=Health.OK) for i in range(chips)))


SPEC = JobSpec(name="gpt", command=("python", "train.py"), workdir="/w", checkpoint_dir="/ck",
               pools={"ascend": PoolShape(nodes=2, ranks_per_node=1), "nvidia": PoolShape(nodes=1, ranks_per_node=2)},
               env={"ascend": {"HCCL_CONNECT_TIMEOUT": "120"}, "nvidia": {"NCCL_DEBUG": "WARN"}})


class Sim:
    """A cluster as the scheduler sees it: node records whose `running` the test sets
    the way heartbeats would, and the calls cluster.py makes."""

    def __init__(self, nodes: list[NodeRecord] | None = None, policy: Policy = DEFAULT,
                 spec: JobSpec = SPEC) -> None:
        self.policy = policy
        self.jobs = Jobs(lambda name: policy if name == policy.name else None)
        self.nodes = {n.node: n for n in (nodes if nodes is not None else default_nodes())}
        self.outs: list[JobOutcome] = []
        self.spec = spec
        self.job = ""

    # --- the cluster's calls -------------------------------------------------------------

    def keep(self, out: JobOutcome) -> JobOutcome:
        self.outs.append(out)
        for node, reason, chips in out.drains:  # what cluster._jobs_outcome does with them
            if node in self.nodes:
                rec = self.nodes[node]
                if chips is None:
                    rec.drained = reason
                else:
                    rec.drained_chips = (*rec.drained_chips, chips)
        return out

    def submit(self, t: float = 0.0) -> JobOutcome:
        out = self.keep(self.jobs.submit(self.spec, at(t)))
        self.job = next(iter(out.records))
        return out

    def tick(self, t: float) -> JobOutcome:
        self.jobs.set_pool_health(self.jobs.pool_health(self.nodes, self.policy))
        return self.keep(self.jobs.tick(at(t), self.nodes))

    def event(self, node: str, name: str, t: float, **fields: Any) -> JobOutcome:
        fields.setdefault("job", self.job)
        fields.setdefault("attempt", self.record.attempt)
        fields.setdefault("observed_at", at(t).wall)
        return self.keep(self.jobs.on_node_event(node, name, {k: v for k, v in fields.items() if v is not None},
                                                 at(t), self.nodes))

    def start_result(self, node: str, t: float, port: int | None = None, ok: bool = True,
                     error: str | None = None, attempt: int | None = None) -> JobOutcome:
        detail = {"master_port": port} if port is not None else {}
        return self.keep(self.jobs.on_start_result(node, self.job, attempt or self.record.attempt, ok, error,
                                                   detail, at(t)))

    def heartbeat(self, node: str, t: float, ranks: list[tuple[int, int, int | None]] | None = None,
                  job: str | None = None) -> JobOutcome:
        """`ranks`: (attempt, rank, step) now running on the node ([] none)."""
        job = job or self.job
        running = tuple(RunningRank(job=job, rank=r, pid=1000 + r, step=s, attempt=a) for a, r, s in ranks or [])
        self.nodes[node].running = running
        return self.keep(self.jobs.on_running(node, [(r.job, r.attempt, r.rank, r.step, r.loss) for r in running],
                                              at(t), self.nodes))

    # --- helpers ------------------------------------------------------------------------

    @property
    def record(self) -> JobRecord:
        return self.jobs.records[self.job]

    def run_attempt(self, t: float, step: int | None = 0) -> None:
        """Tick the pending job into an attempt and bring all its ranks up (by heartbeats)."""
        out = self.tick(t)
        current = self.record.current
        assert current is not None and self.record.state is JobState.STARTING, self.record.state
        master = current.nodes[0].node
        assert [c.node for c in out.commands] == [master]
        self.start_result(master, t + 0.1, port=29500)
        self.tick(t + 0.2)
        for share in current.nodes[1:]:
            self.start_result(share.node, t + 0.3)
        for share in current.nodes:
            self.heartbeat(share.node, t + 0.4, [(current.number, r.rank, step) for r in share.ranks])
        assert self.record.state is JobState.RUNNING

    def ranks_gone(self, t: float) -> None:
        for name in list(self.nodes):
            if self.nodes[name].running:
                self.heartbeat(name, t, [])


def default_nodes() -> list[NodeRecord]:
    return [make_node("a1"), make_node("a2"), make_node("a3"), make_node("n1", Accelerator.NVIDIA, chips=2)]


def commands(out: JobOutcome, kind: str | None = None) -> list[tuple[str, str, int]]:
    return [(c.node, c.args.kind, c.attempt) for c in out.commands if kind is None or c.args.kind == kind]


def events(out: JobOutcome, name: str) -> list[dict[str, Any]]:
    return [c.fields for c in out.changes if c.event == name]


def all_events(sim: Sim, name: str) -> list[dict[str, Any]]:
    return [f for out in sim.outs for f in events(out, name)]


def decisions(sim: Sim) -> list[dict[str, Any]]:
    return [d for d in sim.record.decisions if d["action"] != "none"]


# --- start ---------------------------------------------------------------------------------


def test_submit_places_on_preferred_pool_and_starts_master_first() -> None:
    sim = Sim()
    out = sim.submit(0)
    assert events(out, "job.submitted")[0]["name"] == "gpt"
    assert sim.record.state is JobState.PENDING and sim.record.pool == "ascend"
    out = sim.tick(1)
    rec = sim.record
    assert rec.state is JobState.STARTING and rec.attempt == 1
    assert [n.node for n in rec.current.nodes] == ["a1", "a2"]
    [cmd] = out.commands
    assert (cmd.node, cmd.args.kind, cmd.args.master_port, cmd.attempt) == ("a1", "start_ranks", 0, 1)
    assert cmd.args.master_addr == "addr-a1" and cmd.args.world_size == 2
    assert cmd.args.env == {"HCCL_CONNECT_TIMEOUT": "120", "TRAINGUARD_CKPT_KEEP": "3"}  # the pool env, and checkpoint.keep
    assert [r.rank for r in cmd.args.ranks] == [0]
    assert sim.record.id in out.records

    out = sim.start_result("a1", 2, port=29555)
    assert events(out, "job.rendezvous")[0]["master"] == "addr-a1:29555"
    out = sim.tick(3)
    [cmd] = out.commands
    assert (cmd.node, cmd.args.kind, cmd.args.master_port) == ("a2", "start_ranks", 29555)
    assert [r.rank for r in cmd.args.ranks] == [1]
    sim.start_result("a2", 3.5)

    sim.event("a1", "rank.started", 4, rank=0)
    assert sim.record.state is JobState.STARTING
    sim.event("a2", "rank.started", 5, rank=1)
    assert sim.record.state is JobState.RUNNING
    assert sim.record.first_started_at == at(5).wall
    assert sim.record.current.running_at == at(5).wall
    assert commands(sim.tick(6)) == []


def test_start_is_resent_until_confirmed_and_never_for_a_new_attempt() -> None:
    sim = Sim()
    sim.submit(0)
    sim.tick(1)
    assert commands(sim.tick(2)) == []  # not yet due again
    assert commands(sim.tick(6.5)) == [("a1", "start_ranks", 1)]  # lost? sent again, same attempt
    assert sim.record.attempt == 1


def test_running_by_heartbeats_adopts_ranks() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    assert sim.record.first_started_at == at(1.4).wall


def test_start_refused_fails_the_job() -> None:
    sim = Sim()
    sim.submit(0)
    sim.tick(1)
    out = sim.start_result("a1", 2, ok=False, error="no such directory /w")
    assert sim.record.state is JobState.STOPPING
    assert commands(out, "stop_ranks") == [("a1", "stop_ranks", 1), ("a2", "stop_ranks", 1)]
    sim.tick(3)
    assert sim.record.state is JobState.FAILED
    assert "no such directory" in sim.record.reason


def test_submit_refuses_a_second_live_job_of_the_same_name_and_unknown_policy() -> None:
    sim = Sim()
    sim.submit(0)
    with pytest.raises(JobError) as err:
        sim.jobs.submit(SPEC, at(1))
    assert err.value.code == "busy"
    with pytest.raises(JobError) as err:
        sim.jobs.submit(replace_spec(name="other", policy="nope"), at(1))
    assert err.value.code == "unknown_policy"
    with pytest.raises(JobError):
        sim.jobs.submit(replace_spec(name="other", pools={"tpu": PoolShape(nodes=1, ranks_per_node=1)}), at(1))


def replace_spec(**kw: Any) -> JobSpec:
    return msgspec.structs.replace(SPEC, **kw)


# --- restart -------------------------------------------------------------------------------


def test_crash_restarts_after_the_incident_window_on_the_same_pool() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a2", "signal.crash", 10, rank=1, exit_code=1)
    sim.heartbeat("a2", 10, [])
    assert sim.tick(12.9).commands == []  # the incident window (3 s) is still open
    assert sim.record.state is JobState.RUNNING
    out = sim.tick(13)
    assert decisions(sim)[0]["action"] == "restart" and decisions(sim)[0]["rule"] == "any-fault"
    assert sim.record.state is JobState.RESTARTING
    assert commands(out) == [("a1", "stop_ranks", 1), ("a2", "stop_ranks", 1)]
    sim.tick(14)  # rank 0 still runs on a1
    assert sim.record.state is JobState.RESTARTING
    sim.heartbeat("a1", 15, [])
    sim.tick(15)
    assert sim.record.state is JobState.PENDING and sim.record.restarts == 1
    out = sim.tick(16)
    assert sim.record.state is JobState.STARTING and sim.record.attempt == 2 and sim.record.pool == "ascend"
    assert commands(out) == [("a1", "start_ranks", 2)]
    sim.start_result("a1", 16.1, port=29501)
    sim.tick(16.2)
    sim.start_result("a2", 16.3)
    sim.heartbeat("a1", 17, [(2, 0, 0)])
    sim.heartbeat("a2", 17, [(2, 1, 0)])
    assert sim.record.state is JobState.RUNNING
    assert all_events(sim, "job.recovered")[0]["recovery_s"] == 7.0


def test_stops_are_resent_and_unconfirmed_ranks_given_up_after_grace() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a2", "signal.crash", 10, rank=1)
    sim.tick(13)
    assert sim.record.state is JobState.RESTARTING
    assert commands(sim.tick(14)) == []
    assert commands(sim.tick(18.5)) == [("a1", "stop_ranks", 1), ("a2", "stop_ranks", 1)]
    sim.tick(13 + 30 + 10 + 0.1)  # grace + slack
    assert sim.record.state is JobState.PENDING
    assert all_events(sim, "job.ranks_unaccounted")[0]["ranks"] == ["a1/0", "a2/1"]


def test_sigkilled_rank_and_its_peers_errors_are_one_incident_rooted_at_the_killed_rank() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a2", "signal.crash", 10, rank=1, signal_name="SIGKILL", evidence="killed by SIGKILL")
    sim.event("a1", "signal.network", 10.5, rank=0, evidence="connection reset by peer")
    sim.event("a1", "signal.crash", 10.5, rank=0, exit_code=1, evidence="exit 1")
    out = sim.tick(13)
    [incident] = events(out, "job.incident")
    assert (incident["signal"], incident["node"], incident["rank"]) == ("crash", "a2", 1)
    assert len(incident["consequences"]) == 2
    assert len(sim.record.decisions) == 1 and sim.record.decisions[0]["action"] == "restart"
    assert "restart 1 of at most 10" in sim.record.decisions[0]["reason"]
    assert list(sim.jobs._live[sim.job].policy.restarts) == [at(13).wall]


# --- chip faults, exclusion, no capacity, failover -------------------------------------------


def test_chip_error_restarts_without_the_node_then_fails_over_when_ascend_runs_out() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    # a2's chip 0 fails; the rank on it dies of it.
    sim.nodes["a2"].chips = (ChipStatus(index=0, health=Health.CRITICAL),)
    sim.event("a2", "chip.health_changed", 10, chip=0, signal="chip_error", evidence="Critical",
              job=None, attempt=None)
    sim.event("a2", "signal.crash", 10.2, rank=1, exit_code=1)
    out = sim.tick(13)
    [decision] = decisions(sim)
    assert (decision["action"], decision["rule"], decision["exclude_node"]) == ("restart", "chip-fault", "a2")
    assert [d[0] for d in out.drains] == ["a2"]
    assert sim.nodes["a2"].drained is not None
    sim.ranks_gone(14)
    sim.tick(14)
    assert sim.record.state is JobState.PENDING
    sim.tick(15)
    assert [n.node for n in sim.record.current.nodes] == ["a1", "a3"]  # a2 avoided
    sim.start_result("a1", 15.1, port=29501)
    sim.tick(15.2)
    sim.heartbeat("a1", 16, [(2, 0, 5)])
    sim.heartbeat("a3", 16, [(2, 1, 5)])
    sim.record.last_checkpoint_step = 4
    assert sim.record.state is JobState.RUNNING

    # now a3's chip fails too: only a1 is left on ascend, the job needs 2 nodes.
    sim.nodes["a3"].chips = (ChipStatus(index=0, health=Health.CRITICAL),)
    sim.event("a3", "chip.health_changed", 20, chip=0, signal="chip_error", job=None, attempt=None)
    sim.tick(23)
    assert decisions(sim)[-1]["rule"] == "chip-fault" and sim.nodes["a3"].drained is not None
    sim.ranks_gone(24)
    sim.tick(24)
    assert sim.record.state is JobState.PENDING
    out = sim.tick(25)
    assert events(out, "job.waiting")
    last = decisions(sim)[-1]
    assert (last["action"], last["rule"], last["to_pool"]) == ("failover", "ascend-no-capacity", "nvidia")
    assert sim.record.pool == "nvidia"
    [failover] = sim.record.failovers
    assert (failover.from_pool, failover.to_pool, failover.at, failover.step, failover.rule) == (
        "ascend", "nvidia", at(25).wall, 4, "ascend-no-capacity")
    out = sim.tick(26)
    assert sim.record.state is JobState.STARTING and sim.record.current.pool == "nvidia"
    [cmd] = out.commands
    assert cmd.node == "n1" and cmd.args.world_size == 2 and len(cmd.args.ranks) == 2
    assert [r.chips for r in cmd.args.ranks] == [(0,), (1,)]
    assert cmd.args.env == {"NCCL_DEBUG": "WARN", "TRAINGUARD_CKPT_KEEP": "3"}


def test_three_interconnect_timeouts_fail_over_with_a_checkpoint_first() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1, step=100)
    t = 10.0
    for i in range(2):
        sim.event("a1", "signal.interconnect_timeout", t, rank=0, evidence="EI0002")
        sim.tick(t + 3)
        assert decisions(sim)[-1]["rule"] == "any-fault"
        sim.ranks_gone(t + 4)
        sim.tick(t + 4)
        sim.run_attempt(t + 5, step=100)
        t += 100
    sim.event("a1", "signal.interconnect_timeout", t, rank=0, evidence="EI0002")
    out = sim.tick(t + 3)
    last = decisions(sim)[-1]
    assert (last["action"], last["rule"], last["to_pool"]) == ("failover", "ascend-unstable", "nvidia")
    assert sim.record.state is JobState.FAILING_OVER
    # the checkpoint is asked for (by the same tick), not a stop
    assert commands(out) == [("a1", "checkpoint", 3), ("a2", "checkpoint", 3)]
    assert commands(sim.tick(t + 4)) == []
    assert commands(sim.tick(t + 5)) == []
    out = sim.event("a1", "rank.checkpoint_saved", t + 6, rank=0, step=101)
    assert sim.record.last_checkpoint_step == 101
    out = sim.tick(t + 7)
    assert commands(out) == [("a1", "stop_ranks", 3), ("a2", "stop_ranks", 3)]
    sim.ranks_gone(t + 8)
    sim.tick(t + 8)
    assert sim.record.state is JobState.PENDING and sim.record.pool == "nvidia"
    [failover] = sim.record.failovers
    assert (failover.rule, failover.step) == ("ascend-unstable", 101)
    out = sim.tick(t + 9)
    assert sim.record.current.pool == "nvidia" and commands(out) == [("n1", "start_ranks", 4)]


def test_failover_checkpoint_timeout_stops_anyway() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.jobs.failover(sim.job, "nvidia", at(10))
    assert sim.record.state is JobState.FAILING_OVER
    assert commands(sim.tick(11), "checkpoint") == [("a1", "checkpoint", 1), ("a2", "checkpoint", 1)]
    assert commands(sim.tick(11 + 119)) == []
    out = sim.tick(11 + 120)
    assert events(out, "job.checkpoint_timeout")
    assert commands(out) == [("a1", "stop_ranks", 1), ("a2", "stop_ranks", 1)]
    sim.ranks_gone(132)
    sim.tick(132)
    assert sim.record.state is JobState.PENDING and sim.record.pool == "nvidia"
    assert sim.record.failovers[0].rule == "operator"


# --- stop, fail ----------------------------------------------------------------------------


def test_user_error_stops_the_job_with_the_rule_as_reason() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a1", "signal.user_error", 10, rank=0, evidence="NameError")
    out = sim.tick(13)
    assert sim.record.state is JobState.STOPPING
    assert commands(out) == [("a1", "stop_ranks", 1), ("a2", "stop_ranks", 1)]
    sim.ranks_gone(14)
    out = sim.tick(14)
    assert sim.record.state is JobState.STOPPED
    assert sim.record.reason.startswith("rule user-error")
    assert events(out, "job.stopped")
    assert sim.job not in sim.jobs._live


def test_max_restarts_fails_the_job() -> None:
    policy = load_bytes(SMALL_POLICY.replace(b"max_restarts: 10", b"max_restarts: 2"), "small.yaml")
    sim = Sim(policy=policy, spec=replace_spec(policy="small"))
    sim.submit(0)
    t = 1.0
    for _ in range(2):
        sim.run_attempt(t)
        sim.event("a1", "signal.crash", t + 5, rank=0)
        sim.tick(t + 8)
        assert sim.record.state is JobState.RESTARTING
        sim.ranks_gone(t + 9)
        sim.tick(t + 9)
        t += 20
    sim.run_attempt(t)
    sim.event("a1", "signal.crash", t + 5, rank=0)
    sim.tick(t + 8)
    assert decisions(sim)[-1]["action"] == "fail"
    assert sim.record.state is JobState.STOPPING
    sim.ranks_gone(t + 9)
    sim.tick(t + 9)
    assert sim.record.state is JobState.FAILED and "max_restarts" in sim.record.reason
    assert sim.record.restarts == 2


def test_operator_stop() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    out = sim.jobs.stop(sim.job, 5.0, at(10))
    assert sim.record.state is JobState.STOPPING
    assert [c.args.grace for c in out.commands] == [5.0, 5.0]
    sim.ranks_gone(11)
    sim.tick(11)
    assert sim.record.state is JobState.STOPPED and sim.record.reason == "stopped by the operator"
    with pytest.raises(JobError):
        sim.jobs.stop(sim.job, 5.0, at(12))


def test_operator_stop_of_a_pending_job() -> None:
    sim = Sim(nodes=[])
    sim.submit(0)
    sim.tick(1)
    sim.jobs.stop(sim.job, 5.0, at(2))
    assert sim.record.state is JobState.STOPPED


def test_drained_node_restarts_the_job_without_it() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.nodes["a2"].drained = "maintenance"
    out = sim.keep(sim.jobs.drained("a2", "maintenance", at(10)))
    assert sim.record.state is JobState.RESTARTING
    assert commands(out, "stop_ranks") == [("a1", "stop_ranks", 1), ("a2", "stop_ranks", 1)]
    sim.ranks_gone(11)
    sim.tick(11)
    sim.tick(12)
    assert [n.node for n in sim.record.current.nodes] == ["a1", "a3"]


def test_all_ranks_exit_zero_succeeds_with_ettr() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1, step=0)
    for s in range(1, 11):
        sim.heartbeat("a1", 1.4 + s * 10, [(1, 0, s)])
    sim.event("a1", "rank.exited", 102, rank=0, exit_code=0)
    assert sim.record.state is JobState.RUNNING
    out = sim.event("a2", "rank.exited", 102, rank=1, exit_code=0)
    assert sim.record.state is JobState.SUCCEEDED
    [ended] = events(out, "job.succeeded")
    assert ended["ettr"] == pytest.approx(100 / 100.6, abs=1e-3)


def test_chip_fault_on_a_node_without_a_job_decides_nothing() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    out = sim.event("a3", "chip.health_changed", 10, chip=0, signal="chip_error", job=None, attempt=None)
    sim.tick(20)
    assert sim.record.decisions == [] and out.drains == []
    assert sim.record.state is JobState.RUNNING


def test_signals_of_an_older_attempt_are_never_decided_on() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a1", "signal.crash", 10, rank=0)
    sim.tick(13)
    sim.ranks_gone(14)
    sim.tick(14)
    sim.run_attempt(15)
    sim.event("a1", "signal.crash", 20, rank=0, attempt=1)  # late, from attempt 1
    sim.tick(30)
    assert len(decisions(sim)) == 1 and sim.record.state is JobState.RUNNING


# --- restore -------------------------------------------------------------------------------


def roundtrip(records: list[JobRecord]) -> list[JobRecord]:
    return [msgspec.json.decode(msgspec.json.encode(r), type=JobRecord) for r in records]


def restarted(sim: Sim, t: float) -> Sim:
    """The daemon restarts: a new Jobs with the records as the store had them."""
    new = Sim(nodes=list(sim.nodes.values()), policy=sim.policy, spec=sim.spec)
    new.job = sim.job
    new.outs = sim.outs
    new.keep(new.jobs.restore(roundtrip(list(sim.jobs.records.values())), at(t)))
    return new


def test_restore_mid_start_resends_the_same_attempt() -> None:
    sim = Sim()
    sim.submit(0)
    sim.tick(1)
    new = restarted(sim, 2)
    out = new.tick(3)
    assert new.record.attempt == 1 and commands(out) == [("a1", "start_ranks", 1)]


def test_restore_adopts_running_ranks() -> None:
    sim = Sim()
    sim.submit(0)
    sim.tick(1)
    sim.start_result("a1", 1.1, port=29500)
    sim.tick(1.2)
    new = restarted(sim, 2)
    new.heartbeat("a1", 3, [(1, 0, 3)])
    new.heartbeat("a2", 3, [(1, 1, 3)])
    assert new.record.state is JobState.RUNNING and new.record.attempt == 1
    assert commands(new.tick(10)) == []


def test_restore_mid_restart_carries_on_without_repeating_an_attempt() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a1", "signal.crash", 10, rank=0)
    sim.tick(13)
    assert sim.record.state is JobState.RESTARTING
    new = restarted(sim, 14)
    new.tick(15)  # a1/a2 still report attempt 1 ranks
    assert new.record.state is JobState.RESTARTING
    new.ranks_gone(16)
    new.tick(16)
    new.tick(17)
    assert new.record.attempt == 2 and new.record.state is JobState.STARTING
    assert [a.number for a in new.record.attempts] == [1, 2]
    # the restart counts against the limit after the daemon restart too
    assert len(new.jobs._live[new.job].policy.restarts) == 1


def test_restore_mid_failover_waiting_for_the_checkpoint() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.jobs.failover(sim.job, "nvidia", at(10))
    sim.tick(11)  # checkpoint asked
    new = restarted(sim, 12)
    new.event("a1", "rank.checkpoint_saved", 13, rank=0, step=7)
    out = new.tick(14)
    assert commands(out, "stop_ranks") == [("a1", "stop_ranks", 1), ("a2", "stop_ranks", 1)]
    new.ranks_gone(15)
    new.tick(15)
    new.tick(16)
    assert new.record.pool == "nvidia" and new.record.attempt == 2
    assert new.record.failovers[0].step == 7


SMALL_POLICY = b"""\
version: 1
name: small
pools:
  ascend: {accelerator: ascend}
  nvidia: {accelerator: nvidia}
preferred_pool: ascend
rules:
  - name: any-fault
    when: {signal: [crash, hang]}
    then: {action: restart}
limits: {max_restarts: 10, within: 1h, failover_cooldown: 1h}
"""


# --- whatever arrives, in whatever order ---------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import event as hyp_event  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from supervisor.core.jobs import TRANSITIONS  # noqa: E402

_NODES = ["a1", "a2", "a3", "n1"]
_op = st.one_of(
    st.tuples(st.just("tick"), st.floats(0.1, 40)),
    st.tuples(st.just("signal"), st.sampled_from(_NODES), st.sampled_from(
        ["crash", "hang", "interconnect_timeout", "user_error", "network", "oom", "chip_degraded"]),
        st.integers(0, 2), st.integers(-1, 1)),
    st.tuples(st.just("chip"), st.sampled_from(_NODES), st.integers(0, 1)),
    st.tuples(st.just("lost"), st.sampled_from(_NODES)),
    st.tuples(st.just("result"), st.sampled_from(_NODES), st.booleans(), st.integers(-1, 1)),
    st.tuples(st.just("up"), st.sampled_from(_NODES), st.integers(-1, 1), st.integers(0, 200)),
    st.tuples(st.just("gone"), st.sampled_from(_NODES)),
    st.tuples(st.just("exited"), st.sampled_from(_NODES), st.integers(0, 2), st.sampled_from([0, 0, 1, -9])),
    st.tuples(st.just("saved"), st.sampled_from(_NODES), st.integers(0, 200)),
    st.tuples(st.just("stop"), st.integers(0, 9)),
    st.tuples(st.just("allup"), st.integers(0, 200)),
    st.tuples(st.just("allup"), st.integers(0, 200)),
    st.tuples(st.just("master"),),
    st.tuples(st.just("failover"), st.sampled_from(["ascend", "nvidia"])),
    st.tuples(st.just("drain"), st.sampled_from(_NODES)),
    st.tuples(st.just("restore"),),
)


@settings(max_examples=int(__import__("os").environ.get("HYP_N", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, max_size=60))
def test_any_sequence_keeps_the_state_machine_and_attempts_sound(ops: list[tuple]) -> None:
    sim = Sim()
    sim.submit(0)
    t = 0.0
    for op in ops:
        kind = op[0]
        rec = sim.record
        attempt = max(1, rec.attempt + (op[-1] if kind in ("signal", "result", "up") else 0))
        t += 0.05
        if kind == "tick":
            t += op[1]
            sim.tick(t)
        elif kind == "signal":
            sim.event(op[1], f"signal.{op[2]}", t, rank=op[3], attempt=attempt)
        elif kind == "chip":
            sim.event(op[1], "chip.health_changed", t, chip=op[2], signal="chip_error", job=None, attempt=None)
        elif kind == "lost":
            sim.nodes[op[1]].state = NodeState.LOST
            sim.keep(sim.jobs.on_node_lost(op[1], at(t)))
        elif kind == "result":
            sim.start_result(op[1], t, port=29500, ok=op[2], error=None if op[2] else "refused", attempt=attempt)
        elif kind == "up":
            current = rec.current
            share = current.node(op[1]) if current else None
            if share is not None:
                sim.heartbeat(op[1], t, [(attempt, r.rank, op[3]) for r in share.ranks])
        elif kind == "gone":
            sim.heartbeat(op[1], t, [])
        elif kind == "exited":
            sim.event(op[1], "rank.exited", t, rank=op[2], exit_code=op[3])
        elif kind == "saved":
            sim.event(op[1], "rank.checkpoint_saved", t, rank=0, step=op[2])
        elif kind == "allup":
            for share in rec.current.nodes if rec.current else []:
                sim.heartbeat(share.node, t, [(rec.attempt, r.rank, op[1]) for r in share.ranks])
        elif kind == "master":
            if rec.current:
                sim.start_result(rec.current.nodes[0].node, t, port=29500)
        elif kind == "stop":
            if not rec.state.ended and op[1] == 0:
                sim.keep(sim.jobs.stop(sim.job, 5.0, at(t)))
        elif kind == "failover":
            try:
                sim.keep(sim.jobs.failover(sim.job, op[1], at(t)))
            except JobError:
                pass
        elif kind == "drain":
            sim.nodes[op[1]].drained = "test"
            sim.keep(sim.jobs.drained(op[1], "test", at(t)))
        elif kind == "restore":
            sim = restarted(sim, t)
        check_sound(sim)
        t += 1.0
        sim.tick(t)
        check_sound(sim)
    hyp_event(f"final state {sim.record.state.value}, attempt {min(sim.record.attempt, 3)}")


def check_sound(sim: Sim) -> None:
    rec = sim.record
    numbers = [a.number for a in rec.attempts]
    assert numbers == sorted(set(numbers)), numbers
    if rec.attempts:
        assert rec.attempt == numbers[-1]
    for out in sim.outs:
        for change in events(out, "job.state_changed"):
            assert JobState(change["state"]) in TRANSITIONS[JobState(change["previous"])], change
    # a start is only ever sent for the job's newest attempt at the time; an ended job
    # sends nothing more
    newest, ended = 0, False
    for out in sim.outs:
        assert not (ended and out.commands), out.commands
        ended = ended or any(JobState(c["state"]).ended for c in events(out, "job.state_changed"))
        for cmd in out.commands:
            if cmd.args.kind == "start_ranks":
                assert cmd.attempt >= newest
                newest = cmd.attempt


# --- regressions -----------------------------------------------------------------------------


def test_first_placement_waits_for_capacity_instead_of_failing_over() -> None:
    """no_capacity is a restart or failover that cannot be placed (DESIGN, Signals): a new
    job that does not fit yet waits on its preferred pool, it does not fail over."""
    sim = Sim(nodes=[make_node("a1"), make_node("n1", Accelerator.NVIDIA, chips=2)])
    sim.submit(0)
    out = sim.tick(1)
    assert events(out, "job.waiting") and sim.record.state is JobState.PENDING
    assert sim.record.pool == "ascend" and sim.record.failovers == [] and decisions(sim) == []
    sim.nodes["a2"] = make_node("a2")
    sim.tick(2)
    assert sim.record.state is JobState.STARTING and sim.record.current.pool == "ascend"


def test_restored_restart_waits_for_nodes_to_reregister_instead_of_failing_over() -> None:
    """After a daemon restart every node is `pending` until its agent registers again:
    an unknown pool is not an empty one."""
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a1", "signal.crash", 10, rank=0)
    sim.tick(13)
    sim.ranks_gone(14)
    sim.tick(14)
    assert sim.record.state is JobState.PENDING and sim.record.attempt == 1
    for rec in sim.nodes.values():
        rec.state = NodeState.PENDING  # as NodeTable.restore leaves them
    new = restarted(sim, 15)
    new.nodes["n1"].state = NodeState.UP  # the Nvidia agent happened to register first
    new.tick(16)
    assert new.record.pool == "ascend" and new.record.failovers == [] and new.record.state is JobState.PENDING
    for rec in new.nodes.values():
        rec.state = NodeState.UP
    new.tick(17)
    assert new.record.state is JobState.STARTING and new.record.current.pool == "ascend"
    assert new.record.attempt == 2


def test_a_new_attempt_samples_its_first_step_even_if_the_old_attempt_ended_on_it() -> None:
    """ETTR: attempt 2's first heartbeat reports the step attempt 1 last reported (one step
    redone after a checkpoint at 101): it is still attempt 2's first sample and tells
    where it resumed from."""
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1, step=0)
    sim.heartbeat("a1", 50, [(1, 0, 101)])
    sim.heartbeat("a1", 51, [(1, 0, 102)])
    sim.record.last_checkpoint_step = 101
    sim.event("a1", "signal.crash", 52, rank=0)
    sim.tick(55)
    sim.ranks_gone(56)
    sim.tick(56)
    sim.run_attempt(57, step=102)
    current = sim.record.current
    assert current.number == 2 and current.resumed_from == 101
    assert current.progress == [(102, at(57.4).wall)]
    sim.heartbeat("a1", 58, [(2, 0, 103)])
    assert current.resumed_from == 101 and len(current.progress) == 2


def test_recovery_time_is_measured_from_the_incident_that_ended_the_attempt() -> None:
    """An incident the policy only alerts on (a degraded chip) is not where a later
    recovery starts from."""
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a1", "signal.chip_degraded", 10, rank=0)
    sim.tick(13)
    assert decisions(sim)[-1]["action"] == "alert" and sim.record.state is JobState.RUNNING
    sim.nodes["a2"].drained = "maintenance"
    sim.keep(sim.jobs.drained("a2", "maintenance", at(1000)))
    sim.ranks_gone(1001)
    sim.tick(1001)
    sim.run_attempt(1002)
    assert all_events(sim, "job.recovered") == [] and sim.jobs.recoveries == []
    sim.event("a1", "signal.crash", 2000, rank=0)
    sim.tick(2003)
    sim.ranks_gone(2004)
    sim.tick(2004)
    sim.run_attempt(2005)
    assert [e["recovery_s"] for e in all_events(sim, "job.recovered")] == [5.4]


def test_job_stop_verb_by_name_of_a_job_that_ends_at_once_answers_and_keeps_the_outcome() -> None:
    """`trainguard job stop gpt` of a job still pending: it is stopped at once, and the
    verb must still answer with it (and hand over the record to commit), not fail
    looking the job up by a name that no longer names a live job."""
    from types import SimpleNamespace

    from supervisor.core import control

    sim = Sim(nodes=[])
    sim.submit(0)
    sim.tick(1)
    verb = control.VERBS["job_stop"]
    answer = verb.execute(SimpleNamespace(jobs=sim.jobs), verb.Params(job="gpt"), at(2))
    assert isinstance(answer, control.Acted)
    assert answer.result == {"job": sim.job, "state": "stopped"}
    assert answer.outcome.records[sim.job].state is JobState.STOPPED


def test_a_master_start_result_without_a_port_does_not_strand_the_other_nodes() -> None:
    """The master's start is confirmed only with the port it picked: without one (an
    answer to a repeated command that omitted it) the other nodes could never be
    started, so the master's start is sent again until a port comes back."""
    sim = Sim()
    sim.submit(0)
    sim.tick(1)
    sim.start_result("a1", 2)  # ok, but no master_port
    assert commands(sim.tick(6.5)) == [("a1", "start_ranks", 1)]
    sim.start_result("a1", 7, port=29501)
    out = sim.tick(8)
    assert [(c.node, c.args.master_port) for c in out.commands] == [("a2", 29501)]


def test_an_operator_failover_after_a_policy_one_is_recorded_as_the_operators() -> None:
    sim = Sim(nodes=default_nodes() + [make_node("n2", Accelerator.NVIDIA, chips=2)])
    sim.submit(0)
    sim.run_attempt(1)
    sim.record.decisions.append({"action": "failover", "rule": "ascend-unstable", "at": at(5).wall, "blocked": False})
    sim.jobs.failover(sim.job, "nvidia", at(10))
    sim.tick(11)
    sim.event("a1", "rank.checkpoint_saved", 12, rank=0, step=0)
    sim.tick(13)
    sim.ranks_gone(14)
    sim.tick(14)
    assert [f.rule for f in sim.record.failovers] == ["operator"]


def test_failback_of_a_policy_that_enables_it_happens() -> None:
    """patient-ascend fails back to Ascend once it has been healthy and quiet for 4 h:
    the engine's on_tick must be asked, and its failover carried out like any other."""
    patient = load_file(shipped_policy_dir() / "patient-ascend.yaml")
    nodes = default_nodes() + [make_node("n2", Accelerator.NVIDIA, chips=2)]
    sim = Sim(nodes=nodes, policy=patient, spec=replace_spec(policy="patient-ascend"))
    sim.submit(0)
    sim.run_attempt(1)
    sim.jobs.failover(sim.job, "nvidia", at(10))
    sim.tick(11)
    sim.event("a1", "rank.checkpoint_saved", 12, rank=0, step=0)
    sim.tick(13)
    sim.ranks_gone(14)
    sim.tick(14)
    sim.run_attempt(15)
    assert sim.record.pool == "nvidia" and sim.record.state is JobState.RUNNING
    sim.tick(20)
    assert sim.record.state is JobState.RUNNING  # not quiet long enough yet
    sim.tick(20 + 4 * 3600)
    last = sim.record.decisions[-1]
    assert (last["action"], last["rule"], last["to_pool"]) == ("failover", "failback", "ascend")
    assert sim.record.state is JobState.FAILING_OVER
    assert commands(sim.tick(21 + 4 * 3600), "checkpoint") == [("n1", "checkpoint", 2)]


def test_a_blocked_no_capacity_failover_is_tried_again_when_the_target_pool_recovers() -> None:
    """Level-triggered: the failover was blocked because Nvidia had no healthy node; once
    it has one, the job that still cannot be placed on Ascend moves there, it does not
    wait for Ascend forever."""
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.nodes["n1"].state = NodeState.LOST
    sim.nodes["a3"].state = NodeState.LOST
    sim.nodes["a2"].chips = (ChipStatus(index=0, health=Health.CRITICAL),)
    sim.event("a2", "chip.health_changed", 10, chip=0, signal="chip_error", job=None, attempt=None)
    sim.tick(13)
    sim.ranks_gone(14)
    sim.tick(14)
    sim.tick(15)
    blocked = [d for d in sim.record.decisions if d.get("blocked")]
    assert blocked and blocked[-1]["rule"] == "ascend-no-capacity"
    assert sim.record.pool == "ascend" and sim.record.state is JobState.PENDING
    sim.tick(16)
    assert len([d for d in sim.record.decisions if d.get("blocked")]) == 1  # not re-fed while nothing changed
    sim.nodes["n1"].state = NodeState.UP
    sim.tick(17)
    assert sim.record.pool == "nvidia" and sim.record.failovers[0].rule == "ascend-no-capacity"


def test_the_policy_counts_on_across_a_daemon_restart() -> None:
    """Two HCCL timeouts before a daemon restart and one after still cross the default
    policy's threshold of three (the counted signals are in the record)."""
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1, step=100)
    t = 10.0
    for _ in range(2):
        sim.event("a1", "signal.interconnect_timeout", t, rank=0, evidence="EI0002")
        sim.tick(t + 3)
        sim.ranks_gone(t + 4)
        sim.tick(t + 4)
        sim.run_attempt(t + 5, step=100)
        t += 100
    sim = restarted(sim, t)
    assert sim.record.state is JobState.RUNNING  # the ranks kept training through the daemon's restart
    sim.event("a1", "signal.interconnect_timeout", t + 1, rank=0, evidence="EI0002")
    sim.tick(t + 4)
    last = decisions(sim)[-1]
    assert (last["action"], last["rule"]) == ("failover", "ascend-unstable")


def test_a_failover_to_another_world_size_says_the_resume_is_not_exact() -> None:
    sim = Sim(spec=replace_spec(pools={"ascend": PoolShape(nodes=2, ranks_per_node=1),
                                       "nvidia": PoolShape(nodes=1, ranks_per_node=1)}))
    sim.submit(0)
    sim.run_attempt(1, step=100)
    sim.jobs.failover(sim.job, "nvidia", at(10))
    sim.event("a1", "rank.checkpoint_saved", 11, rank=0, step=100)
    sim.tick(12)
    sim.ranks_gone(13)
    sim.tick(13)
    out = sim.tick(14)
    changed = events(out, "job.world_size_changed")
    assert changed and (changed[0]["then"], changed[0]["now"]) == (2, 1)


# --- hangs: the nodes' views joined into one signal ----------------------------------------


def view(rank: int, step: int, where: str, stack: str = "") -> dict[str, Any]:
    return {"rank": rank, "pid": 4000 + rank, "step": step, "phase": "train", "stalled_for_s": 6.0,
            "where": where, "summary": f"MainThread (idle): f (x.py:{rank})", "stack": stack}


def test_hang_views_of_two_nodes_are_one_signal_hang_on_the_culprit_and_one_incident() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    out = sim.event("a1", "hang.observed", 10, how="heartbeat", ranks=[view(0, 325, "collective")])
    assert events(out, "signal.hang") == []  # a2 has not reported: still joining
    out = sim.event("a2", "hang.observed", 10.4, how="heartbeat", ranks=[view(1, 324, "elsewhere", "Thread 1 ...")])
    [change] = [c for c in out.changes if c.event == "signal.hang"]
    assert change.node == "a2"
    hang = change.fields
    assert (hang["rank"], hang["culprit_by"], hang["step"], hang["attempt"]) == (1, "stack", 324, 1)
    assert hang["observed_at"] == at(10).wall and hang["nodes_reported"] == ["a1", "a2"]
    assert hang["evidence"].splitlines()[2] == "Thread 1 ..."
    # Every node reported: the hang is decided after the settle time, not the 3 s window.
    assert sim.jobs.next_deadline() == pytest.approx(at(10.4).mono + 0.1)
    # A view that comes after the signal (an agent that re-reports) is not a second one.
    assert events(sim.event("a1", "hang.observed", 11, ranks=[view(0, 325, "collective")]), "signal.hang") == []
    [incident] = events(sim.tick(13.5), "job.incident")
    assert (incident["signal"], incident["node"], incident["rank"]) == ("hang", "a2", 1)
    assert decisions(sim)[0]["action"] == "restart"


def test_a_node_that_never_reports_leaves_the_signal_to_the_join_window_and_says_so() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a2", "hang.observed", 10, how="heartbeat", ranks=[view(1, 324, "elsewhere")],
              stacks_note="rank 1: py-spy did not answer within 4s")
    assert sim.jobs.next_deadline() == at(16).mono
    assert events(sim.tick(15.9), "signal.hang") == []
    [hang] = events(sim.tick(16), "signal.hang")
    assert "rank" not in hang and hang["culprit_by"] == "none"
    assert "no view from a1 within 6s" in hang["evidence"]
    assert "a2: rank 1: py-spy did not answer" in hang["evidence"]


def test_a_malformed_view_is_a_note_not_a_crash() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a1", "hang.observed", 10, ranks=[{"rank": -1, "where": "nowhere"}])
    [hang] = events(sim.event("a2", "hang.observed", 10.2, ranks="garbage"), "signal.hang")
    assert hang["culprit_by"] == "none" and "was malformed" in hang["evidence"]


def test_ranks_alive_stay_one_entry_each_through_events_heartbeats_exits_and_a_restore() -> None:
    """`alive` is mirrored by a set for the per-heartbeat lookups (a list scan was 16% of
    the loop at 5,000 nodes with a 4,000-rank job): the saved list must stay exact."""
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    current = sim.record.current
    for t in (2, 3):
        for share in current.nodes:
            sim.heartbeat(share.node, t, [(current.number, r.rank, 5) for r in share.ranks])
    sim.event("a1", "rank.started", 3.5, rank=0)  # again
    assert sorted(current.alive) == ["a1/0", "a2/1"]
    sim.event("a2", "rank.exited", 4, rank=1, exit_code=1)
    assert current.alive == ["a1/0"]
    sim.heartbeat("a2", 4.5, [(current.number, 1, 6)])  # a late heartbeat of the exited rank
    assert current.alive == ["a1/0"]
    restored = msgspec.json.decode(msgspec.json.encode(sim.record), type=JobRecord)  # from the store
    sim.jobs.records[sim.job] = restored
    sim.heartbeat("a1", 5, [(current.number, 0, 7)])
    sim.event("a1", "rank.exited", 5.5, rank=0, exit_code=1)
    assert restored.current.alive == [] and current.alive == ["a1/0"]


def test_once_every_rank_has_ended_the_incident_is_decided_without_waiting_out_the_window() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1)
    sim.event("a2", "signal.interconnect_timeout", 10, rank=1, evidence="EI0002 ...")
    assert sim.jobs.next_deadline() == pytest.approx(at(13).mono)  # could be a chip error's consequence
    sim.event("a2", "rank.exited", 10.2, rank=1, exit_code=1)
    assert sim.jobs.next_deadline() == pytest.approx(at(13).mono)  # rank 0 may still say more
    sim.event("a1", "rank.exited", 10.4, rank=0, exit_code=1)
    assert sim.jobs.next_deadline() == pytest.approx(at(10.4).mono + 0.1)
    [incident] = events(sim.tick(10.65), "job.incident")
    assert incident["signal"] == "interconnect_timeout"


# --- warm spares ---------------------------------------------------------------------------


def spare_commands(out: JobOutcome) -> dict[str, int]:
    return {c.node: c.args.count for c in out.commands if c.args.kind == "keep_standbys"}


def test_a_warm_standby_job_keeps_spares_where_a_restart_or_failover_would_go() -> None:
    nodes = [make_node("a1"), make_node("a2"), make_node("a3"), make_node("a4"),
             make_node("n1", Accelerator.NVIDIA, chips=2)]
    sim = Sim(nodes, spec=msgspec.structs.replace(SPEC, warm_standby=True))
    sim.submit(0)
    sim.run_attempt(1, step=0)
    assert spare_commands(sim.tick(1.5)) == {}, "not before the attempt has stepped"
    sim.heartbeat("a1", 1.8, [(1, 0, 5)])
    out = sim.tick(2)
    # Its own pool without its nodes (a1, a2 run it): a3 and a4; the pool the shipped
    # policy fails over to: n1, with that pool's ranks per node and environment.
    assert spare_commands(out) == {"a3": 1, "a4": 1, "n1": 2}
    by_node = {c.node: c.args for c in out.commands if c.args.kind == "keep_standbys"}
    assert by_node["a3"].argv == SPEC.command and by_node["a3"].cwd == "/w"
    assert by_node["a3"].env == {"HCCL_CONNECT_TIMEOUT": "120", "TRAINGUARD_CKPT_KEEP": "3"}
    assert by_node["n1"].env == {"NCCL_DEBUG": "WARN", "TRAINGUARD_CKPT_KEEP": "3"}
    [chosen] = events(out, "job.spares_chosen")
    assert chosen["nodes"] == ["a3", "a4", "n1"] and chosen["pools"] == ["ascend", "nvidia"]
    assert sim.record.spare_nodes == ["a3", "a4", "n1"] and sim.job in out.records

    # Nothing new while the placement stands still (the cluster sets pool health on a change).
    assert spare_commands(sim.keep(sim.jobs.tick(at(3), sim.nodes))) == {}

    # a3 is lost: a4 would still take the place of a lost a1 or a2; a3 is told to end
    # its standbys (should it come back with them). Looked at again once SPARES_EVERY
    # has passed since the last choice.
    sim.nodes["a3"].state = NodeState.LOST
    assert spare_commands(sim.tick(3.5)) == {}
    out = sim.tick(4)
    assert spare_commands(out) == {"a3": 0, "a4": 1, "n1": 2}
    assert sim.record.spare_nodes == ["a4", "n1"]

    # The job ends: its final stop reaches its nodes and its spares.
    sim.keep(sim.jobs.stop(sim.job, 30.0, at(5)))
    sim.ranks_gone(6)
    sim.tick(7)
    finals = {c.node for o in sim.outs for c in o.commands if c.args.kind == "stop_ranks" and c.args.final}
    assert {"a1", "a2", "a4", "n1"} <= finals


def test_a_job_without_warm_standby_keeps_no_spares() -> None:
    sim = Sim()
    sim.submit(0)
    sim.run_attempt(1, step=5)
    assert spare_commands(sim.tick(2)) == {} and sim.record.spare_nodes == []
