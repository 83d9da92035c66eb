"""The daemon's Prometheus metrics (prometheus-client), on its own registry.

The daemon's loop updates them (gauges once a second from the node table, counters as
things happen); prometheus-client's HTTP thread only reads them, so no cluster state is
touched from another thread. The per-chip readings are the one exception to "set as
things happen": 8 chips x 5 readings of every node are tens of thousands of labelled
samples, which prometheus-client's `labels().set()` made cost the loop about 1.5 s per
second at 1,000 nodes (bench/scale.py). The loop hands over its node records instead
(the node table's census list, replaced whole when the set of nodes changes) and a scrape
reads each record's chips (an immutable tuple, swapped by one reference assignment) and
builds the samples.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from supervisor.core.jobs import JobState, ettr
from supervisor.core.nodes import NodeRecord, NodeTable
from supervisor.core.scheduler import Jobs
from supervisor.shared.vocab import Health, NodeState

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class DaemonMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.nodes = Gauge("trainguard_nodes", "Nodes by liveness state.", ["state"], registry=r)
        self.chips = Gauge("trainguard_chips", "Chips by health, over all nodes.", ["health"], registry=r)
        # Per-chip readings, as the node's probe last read them (`ChipReadings`).
        self.chip_readings = ChipReadings()
        r.register(self.chip_readings)
        self.signals = Counter("trainguard_signals_total", "Fault signals received, by signal and pool.",
                               ["signal", "pool"], registry=r)
        self.detection_latency = Histogram(
            "trainguard_detection_latency_seconds",
            "From when a node observed a signal to when the daemon received it.",
            ["signal"], buckets=_LATENCY_BUCKETS, registry=r)
        self.bad_frames = Counter("trainguard_bad_frames_total", "Frames dropped as invalid, by reason.",
                                  ["reason"], registry=r)
        self.refused_peers = Counter("trainguard_refused_peers_total",
                                     "Connections refused by authentication, by mechanism.", ["mechanism"], registry=r)
        self.handler_failures = Counter("trainguard_daemon_handler_failures_total",
                                        "Steps of the daemon's loop that raised (logged as daemon.handler_failed).",
                                        ["step"], registry=r)
        self.agent_handler_failures = Gauge("trainguard_agent_handler_failures",
                                            "Steps of the agents' loops that raised (agent.handler_failed), summed "
                                            "over the nodes' latest heartbeats.", registry=r)
        self.policy_reloads = Counter("trainguard_policy_reloads_total",
                                      "Policy file (re)loads, by result (loaded, rejected, removed).", ["result"], registry=r)
        # Jobs: by state, restarts and failovers, recovery time, effective training ratio.
        self.jobs = Gauge("trainguard_jobs", "Jobs by state.", ["state"], registry=r)
        self.restarts = Counter("trainguard_job_restarts_total", "Job restarts, by pool.", ["pool"], registry=r)
        self.failovers = Counter("trainguard_job_failovers_total", "Job failovers, by source and target pool.",
                                 ["from_pool", "to_pool"], registry=r)
        self.recovery_latency = Histogram("trainguard_job_recovery_seconds",
                                          "From a fault's signal to the job training again.",
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.effective_training_ratio = Gauge("trainguard_job_effective_training_ratio",
                                              "Share of wall time spent training (not recovering), by job.",
                                              ["job"], registry=r)
        self._failovers_seen: dict[str, int] = {}
        self._restarts_seen: dict[str, int] = {}
        for state in NodeState:
            self.nodes.labels(state.value).set(0)
        for health in Health:
            self.chips.labels(health.value).set(0)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def observe_jobs(self, jobs: Jobs, now: float) -> None:
        states = {s: 0 for s in JobState}
        for record in jobs.records.values():
            states[record.state] += 1
        for state, n in states.items():
            self.jobs.labels(state.value).set(n)
        for record in jobs.live():
            value = ettr(record, now)
            if value is not None:
                self.effective_training_ratio.labels(record.id).set(value)
        while jobs.recoveries:
            _, seconds = jobs.recoveries.pop(0)
            self.recovery_latency.observe(seconds)
        for record in jobs.records.values():
            for failover in record.failovers[self._failovers_seen.get(record.id, 0):]:
                self.failovers.labels(failover.from_pool, failover.to_pool).inc()
            self._failovers_seen[record.id] = len(record.failovers)
            new_restarts = record.restarts - self._restarts_seen.get(record.id, 0)
            if new_restarts > 0:
                self.restarts.labels(record.pool).inc(new_restarts)
            self._restarts_seen[record.id] = record.restarts

    def observe_nodes(self, table: NodeTable) -> None:
        # Counted once per change of a node's state or chip health (NodeTable.census),
        # not over every chip every second.
        records, states, chips = table.census()
        # The census's own list: a new one whenever a node comes or goes, so one that went
        # away leaves no stale sample. Not a list of (node, chips) made here: 10,000 of
        # those every second were ~15 ms of the loop, with the collection they set off.
        self.chip_readings.view = records
        for state, n in states.items():
            self.nodes.labels(state).set(n)
        self.agent_handler_failures.set(sum(r.handler_failures for r in records))
        for health, n in chips.items():
            self.chips.labels(health).set(n)


class ChipReadings:
    """A collector of each chip's readings, built from the chips the daemon's loop last
    handed over when a scrape asks. A chip whose probe cannot read a value has no
    sample for it (absent, never 0). Runs on prometheus-client's thread: it only reads
    `view`, a list of node records the loop replaces whole and never changes, and of each
    record its name and its chips, an immutable tuple the loop swaps whole."""

    def __init__(self) -> None:
        self.view: list[NodeRecord] = []

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        power, utilisation, memory, temperature = families = self._families()
        for record in self.view:
            node = record.node
            for chip in record.chips:
                labels = [node, str(chip.index)]
                if chip.power_w is not None:
                    power.add_metric(labels, chip.power_w)
                if chip.utilisation_pct is not None:
                    utilisation.add_metric(labels, chip.utilisation_pct / 100.0)
                if chip.temperature_c is not None:
                    temperature.add_metric(labels, chip.temperature_c)
                if chip.hbm_used_mb is not None:
                    memory.add_metric([*labels, "hbm"], chip.hbm_used_mb * 2**20)
                if chip.ddr_used_mb is not None:
                    memory.add_metric([*labels, "ddr"], chip.ddr_used_mb * 2**20)
        return iter(families)

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("trainguard_chip_power_watts", "Chip power draw, watts.", labels=["node", "chip"]),
            GaugeMetricFamily("trainguard_chip_utilisation_ratio",
                              "Chip compute use, 0..1 (AI Core on Ascend, GPU on Nvidia).", labels=["node", "chip"]),
            GaugeMetricFamily("trainguard_chip_memory_used_bytes",
                              "Chip memory in use, by kind: hbm (on-chip) or ddr (the card's).",
                              labels=["node", "chip", "kind"]),
            GaugeMetricFamily("trainguard_chip_temperature_celsius", "Chip temperature.", labels=["node", "chip"]),
        ]
