"""The agent's half of jobs, end to end: a real agent process driven by a fake daemon (a
bare ROUTER), real ranks (tests/ranks/job_rank.py and the real train_gpt) under their
wrappers. start_ranks (environment, per-attempt logs, idempotence, newer attempts, the
rendezvous port), rank events, stop_ranks, checkpoint, and an agent SIGKILLed and started
again that adopts its ranks and still learns how each one exits."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest
import zmq

from supervisor.cli.localcluster import wait_for
from supervisor.shared.protocol import (
    Ack,
    CheckpointArgs,
    Command,
    Event,
    Heartbeat,
    RankAssignment,
    Register,
    Result,
    StartRanksArgs,
    StopRanksArgs,
    decode,
    encode,
    new_id,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parent.parent
JOB_RANK = str(REPO / "tests" / "ranks" / "job_rank.py")


class FakeDaemon:
    """A bare ROUTER that welcomes one agent, acknowledges what it sends, keeps it all
    (events by id: a resent one counts once), and sends it commands."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.route = b""
        self.events: dict[str, Event] = {}
        self.registers: list[Register] = []
        self.heartbeats: list[Heartbeat] = []
        self.results: dict[str, Result] = {}

    def close(self) -> None:
        self.sock.close(linger=0)

    def pump(self, seconds: float = 0.05) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if not self.sock.poll(max(0, int(left * 1000))):
                return
            route, frame = self.sock.recv_multipart()
            msg = decode(frame)
            if isinstance(msg, Register):
                self.route = route
                self.registers.append(msg)
                self.send(Ack(id=new_id(), ts=time.time(), ref=msg.id, detail={"heartbeat_interval": 0.3}))
            elif isinstance(msg, Heartbeat):
                self.heartbeats.append(msg)
                self.send(Ack(id=new_id(), ts=time.time(), ref=msg.id))
            elif isinstance(msg, Event):
                self.events.setdefault(msg.id, msg)
                self.send(Ack(id=new_id(), ts=time.time(), ref=msg.id))
            elif isinstance(msg, Result):
                self.results[msg.ref] = msg

    def send(self, message) -> None:
        self.sock.send_multipart([self.route, encode(message)])

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for(lambda: self.pump() or condition(), timeout, what, interval=0)

    def command(self, args, timeout: float = 30.0) -> Result:
        cmd = Command(id=new_id(), ts=time.time(), args=args)
        self.send(cmd)
        return self.wait(lambda: self.results.get(cmd.id), timeout, f"the result of {args.kind}")

    def find(self, name: str, **match: Any) -> list[Event]:
        return [e for e in self.events.values()
                if e.name == name and all(getattr(e, k, e.fields.get(k)) == v for k, v in match.items())]

    def registered(self, after: int = 0) -> Register:
        return self.wait(lambda: len(self.registers) > after and self.registers[-1], 30, "the agent to register")


@pytest.fixture
def fake(tmp_path, make_cluster):
    endpoint = f"ipc://{tmp_path}/fake.sock"
    daemon = FakeDaemon(endpoint)
    cluster = make_cluster()
    cluster.bind = endpoint
    yield daemon, cluster
    daemon.close()
    # Ranks outlive their agent by design; the ones an agent adopted are not its children,
    # so the local cluster's teardown would not find them: kill every wrapper of this test.
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "agents.rankwrap" in cmdline and str(tmp_path) in cmdline:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass


def start_args(attempt: int, ranks: int = 2, argv: tuple[str, ...] | None = None, **kw) -> StartRanksArgs:
    defaults: dict[str, Any] = dict(
        job="j1", attempt=attempt, argv=argv or (sys.executable, JOB_RANK),
        ranks=tuple(RankAssignment(rank=r, local_rank=r, chips=(r,)) for r in range(ranks)),
        world_size=ranks, local_world_size=ranks, master_addr="127.0.0.1", ckpt_dir="/tmp/unused-ckpt",
        cwd=str(REPO),
    )
    defaults.update(kw)
    return StartRanksArgs(**defaults)


def rank_said(log: Path) -> dict:
    """The first line job_rank.py prints: what it was told."""
    return json.loads(wait_for(lambda: log.exists() and log.read_text().split("\n", 1)[0], 30, f"{log} to start"))


def running(daemon: FakeDaemon) -> dict[tuple[str, int], Any]:
    return {(r.job, r.rank): r for r in daemon.heartbeats[-1].running} if daemon.heartbeats else {}


def test_start_ranks_environment_logs_idempotence_newer_attempts_checkpoint_and_stop(fake, tmp_path):
    daemon, cluster = fake
    cluster.start_agent("n1", "sim-ascend", 4)
    daemon.registered()
    work = cluster.root / "nodes" / "n1"

    first = daemon.command(start_args(1, env={"FROM_JOB": "yes"}, ckpt_dir=str(tmp_path / "ckpt"),
                                      hang_timeout=120.0, probe_interval=0.25))
    assert first.ok, first.error
    port = first.detail["master_port"]
    assert port > 0 and first.detail["already"] is False and set(first.detail["pids"]) == {"0", "1"}
    for rank in (0, 1):
        said = rank_said(work / "logs" / "j1" / "attempt-1" / f"rank-{rank}.log")
        assert said["env"] == {
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TRAINGUARD_ATTEMPT": "1",
            "TRAINGUARD_CKPT_DIR": str(tmp_path / "ckpt"), "TRAINGUARD_JOB": "j1", "TRAINGUARD_NODE": "n1",
            "TRAINGUARD_SIM_CHIPS": said["env"]["TRAINGUARD_SIM_CHIPS"], "ASCEND_RT_VISIBLE_DEVICES": str(rank),
            "FROM_JOB": "yes",
        }
        assert said["env"]["TRAINGUARD_SIM_CHIPS"] and said["cwd"] == str(REPO)
        assert said["pid"] == first.detail["pids"][str(rank)], "the pid reported is the rank's, not its wrapper's"
    started = daemon.wait(lambda: len(daemon.find("rank.started", attempt=1)) == 2 and daemon.find("rank.started"),
                          20, "rank.started of both ranks")
    assert {e.rank for e in started} == {0, 1}
    assert all(e.fields["log"].endswith(f"attempt-1/rank-{e.rank}.log") for e in started)
    assert {e.rank: e.fields["chips"] for e in started} == {0: [0], 1: [1]}
    # Heartbeats carry each rank's attempt, step and loss.
    daemon.wait(lambda: len(running(daemon)) == 2 and all((r.step or 0) > 3 and r.loss for r in running(daemon).values()),
                20, "progress of both ranks on heartbeats")
    assert {r.attempt for r in running(daemon).values()} == {1}
    # The job's probe interval is the node's while it runs.
    wait_for(lambda: cluster.find_events("n1", "agent.probe_interval", probe_interval_s=0.25), 10,
             "the job's probe interval to apply")

    # The same command again (a new id: a resend after a daemon restart) starts nothing.
    again = daemon.command(start_args(1, env={"FROM_JOB": "yes"}, ckpt_dir=str(tmp_path / "ckpt")))
    assert again.ok and again.detail["already"] is True
    assert again.detail["pids"] == first.detail["pids"] and again.detail["master_port"] == port
    daemon.pump(0.5)
    assert len(daemon.find("rank.started")) == 2

    # checkpoint → SIGUSR1 to the ranks themselves → rank 0's runtime line → rank.checkpoint_saved.
    asked = daemon.command(CheckpointArgs(job="j1", attempt=1))
    assert asked.ok and asked.detail["ranks_signalled"] == 2
    (saved,) = daemon.wait(lambda: daemon.find("rank.checkpoint_saved"), 20, "rank.checkpoint_saved")
    assert saved.attempt == 1 and saved.rank == 0 and saved.fields["path"].startswith(str(tmp_path / "ckpt"))
    assert saved.fields["step"] > 0

    # A newer attempt kills the older one's ranks (never adopts them) and starts its own.
    second = daemon.command(start_args(2, master_port=port + 1))
    assert second.ok, second.error
    assert second.detail["master_port"] == port + 1 and second.detail["killed_older"] == 2
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in first.detail["pids"].values())
    exited = daemon.wait(lambda: len(daemon.find("rank.exited", attempt=1)) == 2 and daemon.find("rank.exited"),
                         20, "rank.exited of attempt 1")
    assert all(e.fields["requested"] and e.fields["signal_name"] == "SIGKILL" for e in exited)
    assert rank_said(work / "logs" / "j1" / "attempt-2" / "rank-0.log")["env"]["TRAINGUARD_ATTEMPT"] == "2"
    # The older attempt's command, late: stale.
    stale = daemon.command(start_args(1))
    assert not stale.ok and "stale" in stale.error

    # stop_ranks: the ranks' own SIGTERM handling, exit 0, requested, no crash signal.
    stop = daemon.command(StopRanksArgs(job="j1", attempt=2, grace=10.0))
    assert stop.ok and stop.detail["ranks_asked"] == 2
    exited = daemon.wait(lambda: len(daemon.find("rank.exited", attempt=2)) == 2 and daemon.find("rank.exited",
                                                                                                   attempt=2),
                         20, "rank.exited of attempt 2")
    assert all(e.fields["requested"] and e.fields["exit_code"] == 0 and e.fields["pid"] > 0 for e in exited)
    daemon.pump(0.5)
    assert not daemon.find("signal.crash")
    # Nothing to stop is no error: the daemon resends after its own restart.
    nothing = daemon.command(StopRanksArgs(job="other"))
    assert nothing.ok and nothing.detail["ranks_asked"] == 0
    assert not daemon.find("signal.crash") and cluster.procs["n1"].alive()


def test_a_rank_that_fails_is_a_crash_of_its_attempt(fake, tmp_path):
    daemon, cluster = fake
    cluster.start_agent("n1", "sim-ascend", 2)
    daemon.registered()
    missing = daemon.command(start_args(3, cwd=str(tmp_path / "nowhere")))
    assert not missing.ok and str(tmp_path / "nowhere") in missing.error and "does not exist" in missing.error
    marker = tmp_path / "fail"
    result = daemon.command(start_args(3, ranks=1, argv=(sys.executable, JOB_RANK, "--exit-when", str(marker),
                                                         "--code", "3")))
    assert result.ok, result.error
    daemon.wait(lambda: daemon.find("rank.started"), 20, "rank.started")
    marker.touch()
    (exited,) = daemon.wait(lambda: daemon.find("rank.exited"), 20, "rank.exited")
    assert exited.attempt == 3 and exited.fields["exit_code"] == 3 and not exited.fields["requested"]
    (crash,) = daemon.wait(lambda: daemon.find("signal.crash"), 20, "signal.crash")
    assert crash.attempt == 3 and crash.rank == 0 and crash.evidence == "rank 0 of job j1 exited with code 3"


def test_an_agent_killed_and_started_again_adopts_its_ranks_and_learns_how_they_exit(fake, tmp_path):
    daemon, cluster = fake
    cluster.start_agent("n1", "sim-ascend", 4)
    daemon.registered()
    marks = {r: tmp_path / f"exit-{r}" for r in range(4)}
    codes = {1: 7, 2: 5}
    # Each rank of the attempt its own way to end: rank 0 killed, 1 exits 7 after the
    # restart, 2 exits 5 while the agent is down, 3 dies with its wrapper meanwhile.
    pids = {}
    for r in range(4):
        res = daemon.command(StartRanksArgs(
            job=f"a{r}", attempt=1, argv=(sys.executable, JOB_RANK, "--exit-when", str(marks[r]),
                                          "--code", str(codes.get(r, 0))),
            ranks=(RankAssignment(rank=0, local_rank=0, chips=(r,)),), world_size=1, local_world_size=1,
            master_addr="127.0.0.1", ckpt_dir=str(tmp_path / "ckpt"), cwd=str(REPO)))
        assert res.ok, res.error
        pids[r] = res.detail["pids"]["0"]
    daemon.wait(lambda: len(running(daemon)) == 4 and all((x.step or 0) > 2 for x in running(daemon).values()),
                30, "all four ranks stepping")
    wrapper3 = psutil.Process(pids[3]).ppid()

    cluster.kill("n1", signal.SIGKILL)
    marks[2].touch()
    wait_for(lambda: not psutil.pid_exists(pids[2]) or psutil.Process(pids[2]).status() == psutil.STATUS_ZOMBIE,
             20, "rank 2 of a2 to exit while the agent is down")
    os.killpg(wrapper3, signal.SIGKILL)  # rank and wrapper: no status file
    wait_for(lambda: not psutil.pid_exists(pids[3]) or psutil.Process(pids[3]).status() == psutil.STATUS_ZOMBIE,
             20, "a3 to die")

    seen = len(daemon.registers)
    cluster.start_agent("n1", "sim-ascend", 4)
    register = daemon.registered(after=seen)
    adopted = {(r.job, r.rank): r for r in register.running}
    assert set(adopted) == {("a0", 0), ("a1", 0)}
    assert all(r.attempt == 1 for r in adopted.values())
    assert adopted[("a0", 0)].pid == pids[0] and adopted[("a1", 0)].pid == pids[1]

    # The ones that ended while it was down: from the wrapper's status file, or saying there is none.
    (down,) = daemon.wait(lambda: daemon.find("rank.exited", job="a2"), 20, "rank.exited of a2")
    assert down.fields["exit_code"] == 5 and down.attempt == 1
    assert daemon.wait(lambda: daemon.find("signal.crash", job="a2"), 10, "its crash")
    (lost,) = daemon.wait(lambda: daemon.find("rank.exited", job="a3"), 20, "rank.exited of a3")
    assert lost.fields["exit_code"] is None
    assert "exited while the agent was down; no exit status recorded" in lost.evidence
    (lost_crash,) = daemon.wait(lambda: daemon.find("signal.crash", job="a3"), 10, "a3's crash")
    assert "no exit status recorded" in lost_crash.evidence

    # Adopted ranks are still watched: progress reaches the new agent, exits are learnt.
    step = adopted[("a0", 0)].step or 0
    daemon.wait(lambda: (running(daemon).get(("a0", 0)) and (running(daemon)[("a0", 0)].step or 0) > step + 5),
                20, "the adopted rank's progress on heartbeats")
    marks[1].touch()
    (one,) = daemon.wait(lambda: daemon.find("rank.exited", job="a1"), 20, "rank.exited of a1")
    assert one.fields["exit_code"] == 7 and one.attempt == 1 and one.fields["pid"] == pids[1]
    os.kill(pids[0], signal.SIGKILL)
    (zero,) = daemon.wait(lambda: daemon.find("rank.exited", job="a0"), 20, "rank.exited of a0")
    assert zero.fields["exit_code"] == -9 and zero.fields["signal_name"] == "SIGKILL"
    assert zero.evidence == "rank 0 of job a0 was killed by SIGKILL"
    # A resent start of an attempt this node already ran starts nothing, after the restart too.
    again = daemon.command(StartRanksArgs(
        job="a0", attempt=1, argv=(sys.executable, JOB_RANK), ranks=(RankAssignment(rank=0, local_rank=0),),
        world_size=1, local_world_size=1, master_addr="127.0.0.1", ckpt_dir=str(tmp_path / "ckpt")))
    assert again.ok and again.detail["already"] and again.detail["pids"] == {"0": pids[0]}
    assert cluster.procs["n1"].alive()


@pytest.mark.timeout(300)
def test_the_real_trainer_rendezvous_on_the_reported_port_checkpoints_and_stops_on_request(fake, tmp_path):
    daemon, cluster = fake
    cluster.start_agent("n1", "sim-ascend", 2)
    daemon.registered()
    ckpt = tmp_path / "ckpt"
    result = daemon.command(start_args(1, argv=(sys.executable, "-m", "agents.examples.train_gpt", "--steps", "100000",
                                                "--checkpoint-every", "0"), ckpt_dir=str(ckpt)))
    assert result.ok, result.error
    assert result.detail["master_port"] > 0  # the ranks met there: they train
    daemon.wait(lambda: len(running(daemon)) == 2 and all((r.step or 0) > 3 for r in running(daemon).values()),
                240, "both train_gpt ranks to step")
    assert all(r.loss and r.loss > 0 for r in running(daemon).values())

    assert daemon.command(CheckpointArgs(job="j1", attempt=1)).detail["ranks_signalled"] == 2
    (saved,) = daemon.wait(lambda: daemon.find("rank.checkpoint_saved"), 60, "the checkpoint asked for")
    assert saved.attempt == 1 and Path(saved.fields["path"]) == ckpt / f"step-{saved.fields['step']:08d}"
    manifest = json.loads((ckpt / f"step-{saved.fields['step']:08d}" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"state.ckpt", "rank-0.ckpt", "rank-1.ckpt"}

    stop = daemon.command(StopRanksArgs(job="j1", attempt=1, grace=60.0))
    assert stop.ok and stop.detail["ranks_asked"] == 2
    exited = daemon.wait(lambda: len(daemon.find("rank.exited")) == 2 and daemon.find("rank.exited"), 120,
                         "both ranks to stop")
    assert all(e.fields["exit_code"] == 0 and e.fields["requested"] for e in exited), [e.evidence for e in exited]
    final = [e for e in daemon.find("rank.checkpoint_saved") if e.id != saved.id]
    assert len(final) == 1 and final[0].fields["step"] > saved.fields["step"], "one final checkpoint, agreed"
    assert not daemon.find("signal.crash")


def test_a_jobs_own_hang_timeout_judges_its_ranks_and_the_signal_names_the_attempt(fake, tmp_path):
    daemon, cluster = fake
    cluster.start_agent("n1", "sim-ascend", 2)  # the agent's own hang timeout: minutes
    daemon.registered()
    hanging = str(REPO / "tests" / "ranks" / "hanging_trainer.py")
    result = daemon.command(start_args(4, ranks=1, argv=(sys.executable, hanging, "--hang-at", "3", "--marker",
                                                         str(tmp_path / "hung")), hang_timeout=1.5))
    assert result.ok, result.error
    wait_for((tmp_path / "hung").exists, 60, "the rank to hang")
    # (Importing torch may take longer than 1.5 s: a hang at step 0 may come first, rightly.)
    # The agent's view of the stalled job (the daemon names the culprit from the views).
    (hang,) = daemon.wait(lambda: [e for e in daemon.find("hang.observed") if e.fields["ranks"][0].get("step") == 3],
                          20, "hang.observed at step 3")
    assert hang.attempt == 4 and hang.job == "j1" and hang.rank is None and hang.fields["limit_s"] == 1.5
    assert hang.fields["ranks"][0]["rank"] == 0 and hang.fields["ranks"][0]["where"] == "elsewhere"
    assert not daemon.find("signal.hang"), "the agent reports a view, not a signal"
