"""The per-chip readings in the daemon's metrics (power, utilisation, memory by kind),
from a real node table: pure, no daemon process."""

from __future__ import annotations

import msgspec
import pytest

from supervisor.core.nodes import NodeRecord, NodeTable
from supervisor.daemon.metrics import DaemonMetrics
from supervisor.shared.clock import Instant
from supervisor.shared.protocol import ChipStatus
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
