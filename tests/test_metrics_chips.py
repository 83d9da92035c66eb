"""The per-chip readings in the daemon's metrics (power, utilisation, memory by kind),
from a real node table: pure, no daemon process."""

from __future__ import annotations

import msgspec
import pytest

from supervisor.core.nodes import NodeRecord, NodeTable
from supervisor.daemon.metrics import DaemonMetrics
from supervisor.shared.clock import Instant
from supervisor.shared.protocol import ChipStatus, Heartbeat, HostStatus, Register, new_id
from supervisor.shared.vocab import Accelerator, Health, NodeState

pytestmark = pytest.mark.timeout(10)


def table(*records: NodeRecord) -> NodeTable:
    nodes = NodeTable(heartbeat_timeout=15.0)
    nodes.restore(list(records), Instant(100.0, 1000.0))
    return nodes


def value(metrics: DaemonMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_chip_readings_become_labelled_gauges_and_unread_ones_stay_absent() -> None:
    metrics = DaemonMetrics()
    chips = (
        ChipStatus(index=0, health=Health.OK, temperature_c=43.0, power_w=211.3, utilisation_pct=7.0,
                   hbm_used_mb=61609, hbm_total_mb=65536),
        ChipStatus(index=1, health=Health.OK, utilisation_pct=0.0, ddr_used_mb=2703, ddr_total_mb=8192),
    )
    metrics.observe_nodes(table(NodeRecord(node="a1", accelerator=Accelerator.ASCEND, state=NodeState.UP, chips=chips)))
    assert value(metrics, "trainguard_chip_power_watts", node="a1", chip="0") == 211.3
    assert value(metrics, "trainguard_chip_power_watts", node="a1", chip="1") is None  # `-` in npu-smi
    assert value(metrics, "trainguard_chip_utilisation_ratio", node="a1", chip="0") == pytest.approx(0.07)
    assert value(metrics, "trainguard_chip_utilisation_ratio", node="a1", chip="1") == 0.0
    assert value(metrics, "trainguard_chip_memory_used_bytes", node="a1", chip="0", kind="hbm") == 61609 * 2**20
    assert value(metrics, "trainguard_chip_memory_used_bytes", node="a1", chip="1", kind="ddr") == 2703 * 2**20
    assert value(metrics, "trainguard_chip_memory_used_bytes", node="a1", chip="0", kind="ddr") is None
    assert value(metrics, "trainguard_chip_temperature_celsius", node="a1", chip="0") == 43.0

    # A node that went away leaves no stale samples behind.
    metrics.observe_nodes(table())
    assert value(metrics, "trainguard_chip_power_watts", node="a1", chip="0") is None
    assert value(metrics, "trainguard_chips", health="ok") == 0


def test_observing_ten_thousand_nodes_builds_no_per_chip_samples_on_the_loop() -> None:
    """Regression: the loop rebuilt 5 labelled gauges per chip every second, about 1.5 s
    of its time per second at 1,000 eight-chip nodes (bench/scale.py). It now hands the
    chips over and a scrape builds the samples; the bound is some 30x what that takes."""
    import time

    chip = ChipStatus(index=0, health=Health.OK, temperature_c=43.0, power_w=211.3, utilisation_pct=7.0,
                      hbm_used_mb=61609, ddr_used_mb=1024)
    chips = tuple(msgspec.structs.replace(chip, index=i) for i in range(8))
    nodes = table(*(NodeRecord(node=f"n{i}", accelerator=Accelerator.ASCEND, state=NodeState.UP, chips=chips)
                    for i in range(10_000)))
    metrics = DaemonMetrics()
    started = time.perf_counter()
    metrics.observe_nodes(nodes)
    assert time.perf_counter() - started < 1.0
    assert value(metrics, "trainguard_chips", health="ok") == 80_000
    assert value(metrics, "trainguard_chip_memory_used_bytes", node="n9999", chip="7", kind="ddr") == 1024 * 2**20


def test_a_scrape_reads_the_chips_a_heartbeat_brought_since_the_loop_last_observed() -> None:
    """The loop hands over its records, not copies of their chips each second (10,000
    tuples a second were ~15 ms of the loop): new readings show at the next scrape, and
    a node that registers (a new record) shows once the loop has observed it."""
    nodes = NodeTable(heartbeat_timeout=15.0)
    now = Instant(100.0, 1000.0)

    def chips(power: float) -> tuple[ChipStatus, ...]:
        return (ChipStatus(index=0, health=Health.OK, power_w=power),)

    nodes.register(Register(id=new_id(), ts=now.wall, node="a1", accelerator=Accelerator.ASCEND, chips=chips(100.0),
                            agent_version="t", agent_instance="i1", hostname="a1", pid=1,
                            host=HostStatus(health=Health.OK)), now)
    metrics = DaemonMetrics()
    metrics.observe_nodes(nodes)
    assert value(metrics, "trainguard_chip_power_watts", node="a1", chip="0") == 100.0
    nodes.heartbeat(Heartbeat(id=new_id(), ts=now.wall, node="a1", seq=1, agent_instance="i1", chips=chips(250.0),
                              host=HostStatus(health=Health.OK)),
                    now)
    assert value(metrics, "trainguard_chip_power_watts", node="a1", chip="0") == 250.0
    nodes.register(Register(id=new_id(), ts=now.wall, node="a2", accelerator=Accelerator.ASCEND, chips=chips(90.0),
                            agent_version="t", agent_instance="i2", hostname="a2", pid=2,
                            host=HostStatus(health=Health.OK)), now)
    assert value(metrics, "trainguard_chip_power_watts", node="a2", chip="0") is None
    metrics.observe_nodes(nodes)
    assert value(metrics, "trainguard_chip_power_watts", node="a2", chip="0") == 90.0
