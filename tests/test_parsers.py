"""agents.probes.parsers: every recorded tool output in tests/fixtures/tools/ parsed with
its exact values; fixture edits that exercise the unhealthy paths (marked "edited");
failure text → ParseError with a useful message; lenient spacing; and random or mangled
text never raising anything but ParseError."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.probes.parsers import (
    XID_FALLEN_OFF_BUS,
    XID_SEVERITY,
    NpuSmiChip,
    ParseError,
    XidEvent,
    normalize_pci_bus_id,
    npu_health,
    parse_dmesg_xid,
    parse_hccn_link,
    parse_hccn_link_stat,
    parse_hccn_net_health,
    parse_npu_smi_common,
    parse_npu_smi_ecc,
    parse_npu_smi_health,
    parse_npu_smi_info,
    parse_npu_smi_info_chips,
    parse_npu_smi_usages,
    parse_nvidia_smi_csv,
    parse_nvidia_smi_csv_rows,
    parse_nvidia_smi_q,
    parse_nvidia_smi_table,
    xid_health,
)
from supervisor.shared.protocol import ChipStatus
from supervisor.shared.vocab import Health

FIXTURES = Path(__file__).parent / "fixtures" / "tools"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# Which parser reads which fixture. Every fixture file must be listed (checked below).
PARSER_FOR: dict[str, Callable[[str], Any]] = {
    "npu-smi-info-310-21.0.4.txt": parse_npu_smi_info,
    "npu-smi-info-910a-22.0.3.1.txt": parse_npu_smi_info,
    "npu-smi-info-910b2-23.0.7.txt": parse_npu_smi_info,
    "npu-smi-info-910prob-24.1.0.txt": parse_npu_smi_info,
    "npu-smi-info-ascend910-a3-25.2.0.txt": parse_npu_smi_info,
    "npu-smi-info-headerless-910b3-excerpt.txt": parse_npu_smi_info,
    "npu-smi-info-headerless-a3-excerpt.txt": parse_npu_smi_info,
    "npu-smi-info-atlas800-9010-24.1.RC2-warning.txt": parse_npu_smi_info,
    "npu-smi-health-910-ok-mindcluster.txt": parse_npu_smi_health,
    "npu-smi-ecc-910-mindcluster.txt": parse_npu_smi_ecc,
    "npu-smi-common-910-mindcluster.txt": parse_npu_smi_common,
    "npu-smi-common-910b1-23.0.rc2-arthurchiao.txt": parse_npu_smi_common,
    "npu-smi-usages-910b1-23.0.rc2-arthurchiao.txt": parse_npu_smi_usages,
    "hccn-link-up-mindcluster.txt": parse_hccn_link,
    "hccn-link-stat-mindcluster.txt": parse_hccn_link_stat,
    "hccn-net-health-init-mindcluster.txt": parse_hccn_net_health,
    "nvidia-smi-csv-4xt4-510.108.03.txt": parse_nvidia_smi_csv,
    "nvidia-smi-csv-8xh100-535.161.07.txt": parse_nvidia_smi_csv,
    "nvidia-smi-q-a100-40gb-460.32.03.txt": parse_nvidia_smi_q,
    "nvidia-smi-q-a100-80gb-xid63-excerpt.txt": parse_nvidia_smi_q,
    "nvidia-smi-q-ecc-sram-uncorrectable-excerpt.txt": parse_nvidia_smi_q,
    "nvidia-smi-h100-550.90.07.txt": parse_nvidia_smi_table,
    "nvidia-smi-v100-460.32.03-inforom-warning.txt": parse_nvidia_smi_table,
    "dmesg-gpu-fallen-off-bus-no-xid.txt": parse_dmesg_xid,
    "dmesg-xid-119-gsp-timeout.txt": parse_dmesg_xid,
    "dmesg-xid-13-109.txt": parse_dmesg_xid,
    "dmesg-xid-45-after-149.txt": parse_dmesg_xid,
    "dmesg-xid-48-64-dbe.txt": parse_dmesg_xid,
    "dmesg-xid-63-row-remap.txt": parse_dmesg_xid,
    "dmesg-xid-74-nvlink.txt": parse_dmesg_xid,
    "dmesg-xid-79-fallen-off-bus.txt": parse_dmesg_xid,
    "dmesg-xid-94-95-driver-source-examples.txt": parse_dmesg_xid,
}


def test_every_fixture_has_a_parser() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.txt")}
    assert on_disk == set(PARSER_FOR)


@pytest.mark.parametrize("name", sorted(PARSER_FOR))
def test_every_fixture_parses(name: str) -> None:
    assert PARSER_FOR[name](fixture(name)) not in (None, [], {})


def bus(short: str) -> str:
    """`C1` → `00000000:C1:00.0`."""
    return f"00000000:{short}:00.0"


# --- npu-smi info ------------------------------------------------------------------------


def test_npu_910b2_table() -> None:
    chips = parse_npu_smi_info(fixture("npu-smi-info-910b2-23.0.7.txt"))
    assert [c.index for c in chips] == list(range(8))
    assert {c.health for c in chips} == {Health.OK}
    assert [c.temperature_c for c in chips] == [36, 37, 35, 38, 36, 39, 35, 37]
    # Memory-Usage is 0 / 0 on 910B: HBM is reported.
    assert [c.memory_used_mb for c in chips] == [29954, 29951, 29950, 29951, 3347, 3350, 3347, 3347]
    assert {c.memory_total_mb for c in chips} == {65536}
    assert all(c.reason is None for c in chips)
    raw = parse_npu_smi_info_chips(fixture("npu-smi-info-910b2-23.0.7.txt"))
    assert [c.power_w for c in raw] == [96.5, 98.7, 94.2, 91.5, 96.6, 96.0, 97.5, 93.8]
    assert [c.bus_id for c in raw] == [bus(b) for b in ("C1", "01", "C2", "02", "81", "41", "82", "42")]
    assert {(c.name, c.chip_id, c.device_id, c.memory_used_mb, c.memory_total_mb) for c in raw} == {
        ("910B2", 0, None, 0, 0)
    }


def test_npu_910a_table_reports_hbm_not_ddr() -> None:
    raw = parse_npu_smi_info_chips(fixture("npu-smi-info-910a-22.0.3.1.txt"))
    assert [c.npu_id for c in raw] == list(range(8))
    assert [c.temperature_c for c in raw] == [43, 38, 34, 42, 44, 33, 35, 40]
    assert [c.power_w for c in raw] == [67.2, 63.3, 64.8, 191.7, 66.4, 62.7, 64.5, 191.4]
    assert [c.memory_used_mb for c in raw] == [1867, 1867, 1868, 1866, 1867, 1865, 1865, 1866]
    assert {c.memory_total_mb for c in raw} == {15077}
    assert [c.bus_id for c in raw] == [bus(b) for b in ("61", "DB", "B2", "3E", "60", "DA", "B1", "3D")]
    chips = parse_npu_smi_info(fixture("npu-smi-info-910a-22.0.3.1.txt"))
    assert {(c.health, c.memory_used_mb, c.memory_total_mb) for c in chips} == {(Health.OK, 0, 32768)}


def test_npu_910prob_table() -> None:
    raw = parse_npu_smi_info_chips(fixture("npu-smi-info-910prob-24.1.0.txt"))
    assert [c.name for c in raw] == ["910ProB"] * 8
    assert [c.temperature_c for c in raw] == [38, 38, 39, 39, 38, 38, 40, 38]
    assert [(c.memory_used_mb, c.memory_total_mb) for c in raw] == [
        (2387, 13553), (1840, 15665), (2512, 15665), (1645, 15567),
        (1520, 13553), (2639, 15665), (2143, 15665), (2088, 15567),
    ]  # fmt: skip
    chips = parse_npu_smi_info(fixture("npu-smi-info-910prob-24.1.0.txt"))
    assert [c.index for c in chips] == list(range(8))
    assert [c.memory_used_mb for c in chips] == [18, 8, 5, 4, 10, 14, 3, 2]
    assert {c.memory_total_mb for c in chips} == {32768}


def test_npu_a3_two_chips_per_card_are_indexed_by_phy_id() -> None:
    raw = parse_npu_smi_info_chips(fixture("npu-smi-info-ascend910-a3-25.2.0.txt"))
    assert len(raw) == 16  # the 27-row process table below is not read as chips
    assert [(c.npu_id, c.chip_id, c.device_id) for c in raw] == [(i // 2, i % 2, i) for i in range(16)]
    # The second chip of each card prints Power as "-".
    assert [c.power_w for c in raw] == [
        211.3, None, 210.6, None, 205.7, None, 209.9, None,
        219.9, None, 214.0, None, 201.9, None, 205.5, None,
    ]  # fmt: skip
    assert [c.aicore_pct for c in raw] == [7] * 8 + [8, 7, 7, 7, 6, 7, 7, 7]
    assert [c.bus_id for c in raw] == [
        bus(b) for b in ("9D", "9F", "99", "9B", "95", "97", "91", "93", "8D", "8F", "89", "8B", "85", "87", "81", "83")
    ]
    chips = parse_npu_smi_info(fixture("npu-smi-info-ascend910-a3-25.2.0.txt"))
    assert [c.index for c in chips] == list(range(16))
    assert [c.temperature_c for c in chips] == [43, 44, 45, 45, 44, 44, 43, 44, 43, 45, 47, 45, 43, 43, 44, 43]
    assert [c.memory_used_mb for c in chips] == [
        61609, 61625, 61616, 61619, 61633, 61623, 61625, 61628,
        61602, 61618, 61578, 61603, 61614, 61623, 61627, 61631,
    ]  # fmt: skip
    assert {(c.health, c.memory_total_mb) for c in chips} == {(Health.OK, 65536)}


def test_npu_310_four_chips_on_one_card_are_indexed_by_device() -> None:
    raw = parse_npu_smi_info_chips(fixture("npu-smi-info-310-21.0.4.txt"))
    assert [(c.npu_id, c.chip_id, c.device_id) for c in raw] == [(6, 0, 3), (6, 1, 4), (6, 2, 5), (6, 3, 6)]
    assert [c.bus_id for c in raw] == [bus(b) for b in ("89", "8A", "8B", "8C")]
    assert {(c.name, c.power_w, c.hbm_total_mb) for c in raw} == {("310", 12.8, None)}
    chips = parse_npu_smi_info(fixture("npu-smi-info-310-21.0.4.txt"))
    assert [c.index for c in chips] == [3, 4, 5, 6]
    assert [c.temperature_c for c in chips] == [73, 74, 70, 65]
    # No HBM column: the Memory-Usage pair is the chip's memory.
    assert [(c.memory_used_mb, c.memory_total_mb) for c in chips] == [(2703, 8192), (2867, 8192), (2867, 8192), (2867, 8192)]


def test_npu_24_1_rc2_table_with_two_warning_chips() -> None:
    chips = parse_npu_smi_info(fixture("npu-smi-info-atlas800-9010-24.1.RC2-warning.txt"))
    assert [c.index for c in chips] == list(range(8))
    assert [c.health for c in chips] == [Health.OK] * 3 + [Health.WARNING] + [Health.OK] * 3 + [Health.WARNING]
    assert chips[3].reason == chips[7].reason == "npu-smi reports health Warning"
    assert [c.temperature_c for c in chips] == [42, 36, 35, 39, 39, 37, 40, 42]
    raw = parse_npu_smi_info_chips(fixture("npu-smi-info-atlas800-9010-24.1.RC2-warning.txt"))
    assert [c.health_word for c in raw] == ["OK"] * 3 + ["Warning"] + ["OK"] * 3 + ["Warning"]
    assert {c.name for c in raw} == {"xxx"}  # Huawei redacted the model: not needed
    assert [c.memory_total_mb for c in raw] == [15137, 15137, 15137, 15039, 15137, 15137, 15137, 15039]


def test_npu_chip_name_with_spaces_edited() -> None:
    text = fixture("npu-smi-info-910b2-23.0.7.txt").replace("| 0     910B2               |", "| 0     Ascend 910B2        |")
    chip = parse_npu_smi_info_chips(text)[0]
    assert (chip.name, chip.npu_id, chip.temperature_c) == ("Ascend 910B2", 0, 36.0)


def test_npu_chip_record_is_frozen_and_keeps_its_line() -> None:
    chip = parse_npu_smi_info_chips(fixture("npu-smi-info-910b2-23.0.7.txt"))[1]
    assert isinstance(chip, NpuSmiChip) and chip.line == 10
    with pytest.raises(AttributeError):
        chip.npu_id = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("word", "health"),
    [("Alarm", Health.ALARM), ("Critical", Health.CRITICAL), ("CRITICAL", Health.CRITICAL), ("ok", Health.OK)],
)
def test_npu_health_words_edited_table(word: str, health: Health) -> None:
    # Edited: the second Warning of the 24.1.RC2 table replaced (same width, as npu-smi pads).
    text = fixture("npu-smi-info-atlas800-9010-24.1.RC2-warning.txt")
    head, _, tail = text.rpartition("| Warning       |")
    chips = parse_npu_smi_info(head + f"| {word:<13} |" + tail)
    assert chips[7].health is health
    assert chips[3].health is Health.WARNING


@pytest.mark.parametrize("word", ["NA", "UNKNOWN", "NOT EXIST", ""])
def test_npu_unknown_health_word_is_unknown_with_the_word(word: str) -> None:
    text = fixture("npu-smi-info-atlas800-9010-24.1.RC2-warning.txt")
    head, _, tail = text.rpartition("| Warning       |")
    chip = parse_npu_smi_info(head + f"| {word:<13} |" + tail)[7]
    assert chip.health is Health.UNKNOWN
    assert chip.reason is not None and (word in chip.reason if word else "no health word" in chip.reason)


def test_npu_health_mapping() -> None:
    assert npu_health("OK") == (Health.OK, None)
    assert npu_health(" warning ") == (Health.WARNING, "npu-smi reports health warning")
    assert npu_health("NA")[0] is Health.UNKNOWN and "'NA'" in (npu_health("NA")[1] or "")


# --- npu-smi info -t health | ecc | common | usages ------------------------------------


def test_npu_health_ok_capture() -> None:
    assert parse_npu_smi_health(fixture("npu-smi-health-910-ok-mindcluster.txt")) == {
        "health": Health.OK,
        "health_word": "OK",
        "error_codes": (),
        "error_information": None,
        "reason": None,
    }


def test_npu_health_with_error_codes_edited() -> None:
    # Edited: no unhealthy capture exists (SOURCES.md, "Not found"); laid out as npu-smi's
    # source prints it: codes as " %04X" after "Error Code", one description per code.
    text = (
        "\tHealth Status                  : Alarm\n"
        "\tError Code                     :  80E01801 0001\n"
        "\tError Information              : node type=HBM, sensor type=ECC, event state=uncorrectable\n"
        "\tsecond description\n"
    )
    got = parse_npu_smi_health(text)
    assert got["health"] is Health.ALARM
    assert got["error_codes"] == ("80E01801", "0001")
    assert got["error_information"] == "node type=HBM, sensor type=ECC, event state=uncorrectable; second description"
    assert got["reason"] == (
        "npu-smi reports health Alarm, error codes 80E01801 0001: "
        "node type=HBM, sensor type=ECC, event state=uncorrectable; second description"
    )


def test_npu_ecc_counters() -> None:
    got = parse_npu_smi_ecc(fixture("npu-smi-ecc-910-mindcluster.txt"))
    assert (got["npu_id"], got["chip_id"]) == (0, 0)
    assert got["ecc_correctable"] == got["ecc_uncorrectable"] == 0
    assert got["ecc_correctable_aggregate"] == got["ecc_uncorrectable_aggregate"] == got["isolated_pages"] == 0
    assert got["fields"]["hbm_double_bit_error_count"] == 0
    assert len([k for k in got["fields"] if "bit" in k]) == 12


def test_npu_ecc_sums_ddr_and_hbm_edited() -> None:
    text = fixture("npu-smi-ecc-910-mindcluster.txt")
    text = re.sub(r"(HBM Double Bit Error Count\s+:) 0", r"\1 3", text)
    text = re.sub(r"(DDR Double Bit Error Count\s+:) 0", r"\1 1", text)
    text = re.sub(r"(HBM Single Bit Error Count\s+:) 0", r"\1 40", text)
    text = re.sub(r"(HBM Double Bit Aggregate Total Err Cnt\s+:) 0", r"\1 9", text)
    text = re.sub(r"(DDR Single Bit Error Count\s+:) 0", r"\1 NA", text)
    got = parse_npu_smi_ecc(text)
    assert (got["ecc_uncorrectable"], got["ecc_correctable"], got["ecc_uncorrectable_aggregate"]) == (4, 40, 9)


def test_npu_common_910() -> None:
    got = parse_npu_smi_common(fixture("npu-smi-common-910-mindcluster.txt"))
    assert {k: got[k] for k in ("npu_id", "chip_id", "temperature_c", "power_w", "health")} == {
        "npu_id": 0, "chip_id": 0, "temperature_c": 41.0, "power_w": 71.7, "health": None,
    }  # fmt: skip
    assert (got["aicore_usage_pct"], got["memory_usage_pct"], got["hbm_usage_pct"]) == (0, 6, 0)
    assert got["fields"]["aicore_freq_mhz"] == 900 and got["fields"]["aicore_count"] == 30
    assert got["components"] == {}


def test_npu_common_910b1_keeps_the_mcu_temperature_apart() -> None:
    got = parse_npu_smi_common(fixture("npu-smi-common-910b1-23.0.rc2-arthurchiao.txt"))
    assert (got["npu_id"], got["chip_id"], got["temperature_c"], got["power_w"]) == (1, 0, 46.0, 93.4)
    assert (got["aicore_usage_pct"], got["memory_usage_pct"], got["hbm_usage_pct"]) == (0, 0, 4)
    assert got["fields"]["aicore_curfreq_mhz"] == 800
    assert got["components"] == {"mcu": {"temperature_c": 38}}


def test_npu_common_health_line_when_present_edited() -> None:
    text = fixture("npu-smi-common-910-mindcluster.txt") + "        Health Status                  : Critical\n"
    got = parse_npu_smi_common(text)
    assert (got["health"], got["health_word"]) == (Health.CRITICAL, "Critical")


def test_npu_usages_910b1() -> None:
    got = parse_npu_smi_usages(fixture("npu-smi-usages-910b1-23.0.rc2-arthurchiao.txt"))
    assert {k: v for k, v in got.items() if k != "fields"} == {
        "npu_id": 0, "chip_id": 0, "hbm_capacity_mb": 65536, "hbm_usage_pct": 4.0,
        "ddr_capacity_mb": 0, "ddr_usage_pct": 0.0, "aicore_usage_pct": 0.0,
    }  # fmt: skip
    assert got["fields"]["hbm_bandwidth_usage_rate_pct"] == 0


# --- hccn_tool ---------------------------------------------------------------------------


def test_hccn_link_up() -> None:
    assert parse_hccn_link(fixture("hccn-link-up-mindcluster.txt")) == "up"


@pytest.mark.parametrize("text", ["link status: DOWN\n", "  link status :down  \n", "\tlink status: Down"])
def test_hccn_link_down(text: str) -> None:
    assert parse_hccn_link(text) == "down"


def test_hccn_link_unknown_word_raises() -> None:
    with pytest.raises(ParseError, match="neither UP nor DOWN.*line 1.*FLAPPING"):
        parse_hccn_link("link status: FLAPPING\n")


def test_hccn_link_stat() -> None:
    assert parse_hccn_link_stat(fixture("hccn-link-stat-mindcluster.txt")) == {
        "device": 0,
        "current_time": "Wed Jun  7 10:08:28 2023",
        "link_up_count": 2,
        "changes": (
            ("Tue Jun  6 16:32:12 2023", "up"),
            ("Tue Jun  6 16:32:10 2023", "down"),
            ("Tue Jun  6 16:31:55 2023", "up"),
        ),
    }


def test_hccn_net_health() -> None:
    assert parse_hccn_net_health(fixture("hccn-net-health-init-mindcluster.txt")) == "Init"


# --- nvidia-smi --query-gpu CSV ------------------------------------------------------------


def test_csv_8xh100_nounits() -> None:
    chips = parse_nvidia_smi_csv(fixture("nvidia-smi-csv-8xh100-535.161.07.txt"))
    assert [c.index for c in chips] == list(range(8))
    assert [c.temperature_c for c in chips] == [26, 26, 25, 25, 26, 26, 25, 25]
    assert {(c.health, c.memory_used_mb, c.memory_total_mb, c.ecc_uncorrectable, c.ecc_correctable) for c in chips} == {
        (Health.OK, 0, 81559, 0, 0)
    }
    rows = parse_nvidia_smi_csv_rows(fixture("nvidia-smi-csv-8xh100-535.161.07.txt"))
    assert [r["utilization.gpu"] for r in rows] == [0] * 8
    assert [r["power.draw.average"] for r in rows][:4] == [70.89, 71.71, 70.78, 72.17]
    # Rows 4-7 repeat the bus ids of rows 0-3 upstream (SOURCES.md); kept as printed.
    assert [r["pci.bus_id"] for r in rows] == ["00000000:0A:00.0", "00000000:11:00.0", "00000000:18:00.0", "00000000:69:00.0"] * 2
    assert rows[0]["name"] == "NVIDIA H100 80GB HBM3" and rows[0]["driver_version"] == "535.161.07"


def test_csv_4xt4_without_index_or_ecc_columns() -> None:
    chips = parse_nvidia_smi_csv(fixture("nvidia-smi-csv-4xt4-510.108.03.txt"))
    assert [c.index for c in chips] == [0, 1, 2, 3]  # row order
    assert [c.temperature_c for c in chips] == [48, 51, 53, 53]
    assert [c.memory_used_mb for c in chips] == [257, 14, 14, 14]
    assert {(c.health, c.memory_total_mb, c.ecc_uncorrectable) for c in chips} == {(Health.OK, 16384, 0)}
    rows = parse_nvidia_smi_csv_rows(fixture("nvidia-smi-csv-4xt4-510.108.03.txt"))
    assert [r["pci.bus_id"] for r in rows] == [f"0000000{i}:00:00.0" for i in (1, 2, 3, 4)]
    assert [r["memory.free"] for r in rows] == [15670, 15913, 15913, 15913]


QUERY = "index,temperature.gpu,memory.used,memory.total,utilization.gpu,ecc.errors.uncorrected.volatile.total"


def test_csv_with_units_and_na() -> None:
    # The shape of plain --format=csv (units on values), for fields seen in the fixtures.
    text = (
        "index, temperature.gpu, memory.used [MiB], memory.total [MiB], utilization.gpu [%], "
        "ecc.errors.uncorrected.volatile.total\n"
        "0, 31, 1 MiB, 81559 MiB, 0 %, [N/A]\n"
        "1, [N/A], 4 MiB, 81559 MiB, 97 %, [Not Supported]\n"
    )
    chips = parse_nvidia_smi_csv(text)
    assert [(c.index, c.temperature_c, c.memory_used_mb, c.memory_total_mb, c.health) for c in chips] == [
        (0, 31.0, 1, 81559, Health.OK),
        (1, None, 4, 81559, Health.OK),
    ]
    assert [r["utilization.gpu"] for r in parse_nvidia_smi_csv_rows(text)] == [0, 97]


def test_csv_noheader_needs_the_field_names() -> None:
    text = "0, 31, 1, 81559, 0, 0\n1, 33, 2, 81559, 5, 2\n"
    chips = parse_nvidia_smi_csv(text, fields=QUERY.split(","))
    assert [(c.index, c.health, c.ecc_uncorrectable) for c in chips] == [(0, Health.OK, 0), (1, Health.ALARM, 2)]
    assert chips[1].reason == "2 uncorrectable ECC errors since the driver loaded"
    with pytest.raises(ParseError, match="noheader"):
        parse_nvidia_smi_csv(text)


def test_csv_ecc_aggregate_only_and_volatile_edited() -> None:
    text = fixture("nvidia-smi-csv-8xh100-535.161.07.txt").splitlines()
    header = [h.strip() for h in text[0].split(",")]
    row = [v.strip() for v in text[1].split(",")]
    row[header.index("ecc.errors.uncorrected.volatile.total")] = "1"
    row[header.index("ecc.errors.uncorrected.aggregate.total")] = "6"
    row[header.index("ecc.errors.corrected.volatile.total")] = "12"
    chip = parse_nvidia_smi_csv("\n".join([text[0], ", ".join(row)]))[0]
    assert (chip.health, chip.ecc_uncorrectable, chip.ecc_correctable) == (Health.ALARM, 1, 12)
    assert chip.reason == "1 uncorrectable ECC error since the driver loaded"
    row[header.index("ecc.errors.uncorrected.volatile.total")] = "[N/A]"
    chip = parse_nvidia_smi_csv("\n".join([text[0], ", ".join(row)]))[0]
    assert (chip.health, chip.ecc_uncorrectable) == (Health.WARNING, 6)
    assert "lifetime" in (chip.reason or "")


def test_csv_bracketed_errors_are_not_healthy() -> None:
    text = "index, temperature.gpu, memory.used [MiB]\n0, [Unknown Error], 1 MiB\n1, [GPU is lost], [GPU is lost]\n"
    chips = parse_nvidia_smi_csv(text)
    assert chips[0].health is Health.UNKNOWN and "[Unknown Error] for temperature.gpu" in (chips[0].reason or "")
    assert chips[1].health is Health.CRITICAL


def test_csv_row_count_mismatch_names_the_line() -> None:
    with pytest.raises(ParseError, match=r"3 values but there are 2 fields \(line 3"):
        parse_nvidia_smi_csv("index, temperature.gpu\n0, 30\n1, 30, 4\n")


def test_csv_header_mismatch_with_queried_fields() -> None:
    with pytest.raises(ParseError, match="does not match"):
        parse_nvidia_smi_csv("index, name\n0, x\n", fields=["index", "temperature.gpu"])


# --- nvidia-smi -q -------------------------------------------------------------------------


def test_q_a100_full_record() -> None:
    assert parse_nvidia_smi_q(fixture("nvidia-smi-q-a100-40gb-460.32.03.txt")) == [
        ChipStatus(index=0, health=Health.OK, temperature_c=41.0, memory_used_mb=0, memory_total_mb=40536)
    ]


def test_q_xid63_excerpt_row_remapping_pending() -> None:
    (chip,) = parse_nvidia_smi_q(fixture("nvidia-smi-q-a100-80gb-xid63-excerpt.txt"))
    assert (chip.index, chip.health, chip.ecc_correctable, chip.ecc_uncorrectable) == (0, Health.ALARM, 177, 0)
    assert chip.reason == "row remapping is pending: reset the GPU to activate it"
    assert (chip.temperature_c, chip.memory_used_mb) == (None, None)  # elided by the author


def test_q_sram_excerpt_without_gpu_line() -> None:
    (chip,) = parse_nvidia_smi_q(fixture("nvidia-smi-q-ecc-sram-uncorrectable-excerpt.txt"))
    assert (chip.index, chip.health, chip.ecc_uncorrectable, chip.ecc_correctable) == (0, Health.ALARM, 1, 0)
    assert chip.reason == "1 uncorrectable ECC error since the driver loaded; 5 in its lifetime"


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("Pending Page Blacklist            : N/A", "Pending Page Blacklist            : Yes", "retired page is pending"),
        ("Remapping Failure Occurred        : No", "Remapping Failure Occurred        : Yes", "row remapping failed"),
        ("Pending                           : No", "Pending                           : Yes", "row remapping is pending"),
    ],
)
def test_q_retirement_and_remapping_flags_edited(old: str, new: str, reason: str) -> None:
    text = fixture("nvidia-smi-q-a100-40gb-460.32.03.txt")
    assert old in text
    (chip,) = parse_nvidia_smi_q(text.replace(old, new))
    assert chip.health is Health.ALARM and reason in (chip.reason or "")


def test_q_two_gpus_in_order_edited() -> None:
    text = fixture("nvidia-smi-q-a100-40gb-460.32.03.txt")
    second = text[text.index("GPU 00000001:00:00.0") :].replace("GPU 00000001:00:00.0", "GPU 00000002:00:00.0")
    second = second.replace("GPU Current Temp                  : 41 C", "GPU Current Temp                  : 77 C")
    chips = parse_nvidia_smi_q(text + second)
    assert [(c.index, c.temperature_c) for c in chips] == [(0, 41.0), (1, 77.0)]


def test_q_block_with_no_readings_is_unknown() -> None:
    (chip,) = parse_nvidia_smi_q("GPU 00000000:3B:00.0\n    Product Name : NVIDIA A100\n")
    assert chip.health is Health.UNKNOWN and "no temperature, memory or ECC" in (chip.reason or "")


# --- nvidia-smi table ----------------------------------------------------------------------


def test_table_h100_new_layout() -> None:
    chips = parse_nvidia_smi_table(fixture("nvidia-smi-h100-550.90.07.txt"))
    assert [c.index for c in chips] == list(range(8))
    assert [c.temperature_c for c in chips] == [25, 27, 26, 27, 27, 25, 26, 24]
    assert {(c.health, c.memory_used_mb, c.memory_total_mb, c.ecc_uncorrectable, c.reason) for c in chips} == {
        (Health.OK, 1, 81559, 0, None)
    }


def test_table_v100_old_layout_with_inforom_warning() -> None:
    chips = parse_nvidia_smi_table(fixture("nvidia-smi-v100-460.32.03-inforom-warning.txt"))
    assert [c.index for c in chips] == list(range(8))
    assert [c.temperature_c for c in chips] == [40, 40, 43, 39, 38, 42, 42, 41]
    assert {(c.memory_used_mb, c.memory_total_mb) for c in chips} == {(0, 32510)}
    # The warning names gpu 0008:00:00.0, which is GPU 7 (bus id 00000008:00:00.0).
    assert [c.health for c in chips] == [Health.OK] * 7 + [Health.WARNING]
    assert chips[7].reason == "nvidia-smi warns: infoROM is corrupted at gpu 0008:00:00.0"


@pytest.mark.parametrize(
    ("ecc", "health", "count"),
    [("ERR!", Health.CRITICAL, 0), ("3", Health.ALARM, 3), ("N/A", Health.OK, 0), ("0", Health.OK, 0)],
)
def test_table_ecc_column_edited(ecc: str, health: Health, count: int) -> None:
    text = fixture("nvidia-smi-h100-550.90.07.txt")
    old = "|   2  NVIDIA H100 80GB HBM3          On  |   00000000:75:00.0 Off |                    0 |"
    assert old in text
    chips = parse_nvidia_smi_table(text.replace(old, old[: -len(ecc) - 2] + ecc + " |"))
    assert (chips[2].health, chips[2].ecc_uncorrectable) == (health, count)
    assert {c.health for i, c in enumerate(chips) if i != 2} == {Health.OK}
    if ecc == "ERR!":
        assert chips[2].reason == "nvidia-smi shows ERR! for Volatile Uncorr. ECC"


def test_table_err_in_other_fields_is_a_warning_edited() -> None:
    text = fixture("nvidia-smi-h100-550.90.07.txt").replace(
        "| N/A   27C    P0             93W /  700W |", "| ERR!  ERR!   P0           ERR! /  700W |", 1
    )
    chip = parse_nvidia_smi_table(text)[1]
    assert (chip.health, chip.temperature_c) == (Health.WARNING, None)


# --- dmesg Xid ---------------------------------------------------------------------------


def test_dmesg_xid79_and_its_unnumbered_twin() -> None:
    assert parse_dmesg_xid(fixture("dmesg-xid-79-fallen-off-bus.txt")) == [
        XidEvent(
            pci_bus_id="00000000:A1:00.0",
            xid=79,
            pid=None,
            process=None,
            message="GPU has fallen off the bus.",
            line=3,
            timestamp="Fri Apr  5 21:29:39 2024",
        )
    ]


def test_dmesg_fallen_off_bus_without_xid_joins_continuation_lines() -> None:
    (event,) = parse_dmesg_xid(fixture("dmesg-gpu-fallen-off-bus-no-xid.txt"))
    assert event == XidEvent(
        pci_bus_id="00000000:B3:00.0",
        xid=XID_FALLEN_OFF_BUS,
        pid=None,
        process=None,
        message="The NVIDIA GPU 0000:b3:00.0 (PCI ID: 10de:26b5) installed in this system has fallen off the bus "
        "and is not responding to commands.",
        line=1,
        timestamp="1843.308145",
        numbered=False,
    )
    # The same critical fault as a numbered Xid 79, whatever the driver printed.
    assert event.xid == 79 and event.health is Health.CRITICAL


def test_dmesg_xid13_and_109() -> None:
    events = parse_dmesg_xid(fixture("dmesg-xid-13-109.txt"))
    assert [(e.xid, e.pid, e.process, e.line) for e in events] == [
        (13, None, None, 2), (13, None, None, 3), (13, None, None, 4), (109, 1797828, "pt_main_thread", 5),
    ]  # fmt: skip
    assert {e.pci_bus_id for e in events} == {"00000000:CB:00.0"}
    assert events[0].message == "Graphics SM Warp Exception on (GPC 7, TPC 7, SM 0): Illegal Instruction Parameter"
    assert events[3].message == "Ch 00000008, errorString CTX SWITCH TIMEOUT, Info 0x58005"
    assert events[3].timestamp == "Fri Aug 30 11:43:14 2024"


def test_dmesg_xid119_ignores_the_banner_lines() -> None:
    (event,) = parse_dmesg_xid(fixture("dmesg-xid-119-gsp-timeout.txt"))
    assert (event.pci_bus_id, event.xid, event.pid, event.process, event.line) == (
        "00000001:6C:00.0", 119, 10200, "NvmlTaskRunner", 3,
    )  # fmt: skip
    assert event.message.startswith("Timeout after 45s of waiting for RPC response from GPU5 GSP!")
    assert event.health is Health.CRITICAL


def test_dmesg_xid45_without_timestamps() -> None:
    events = parse_dmesg_xid(fixture("dmesg-xid-45-after-149.txt"))
    assert [(e.pci_bus_id[9:11] if e.pci_bus_id else None, e.pid) for e in events] == [
        ("DC", 1818990), ("ED", 1818992), ("BA", 1818989), ("97", 1818987),
        ("DC", 1818990), ("BA", 1818989), ("ED", 1818992),
    ]  # fmt: skip
    assert {(e.xid, e.process, e.timestamp) for e in events} == {(45, "python3", None)}
    assert events[0].message == "Ch 00000001 caused by previous Xid 149"


def test_dmesg_xid48_64_in_syslog() -> None:
    events = parse_dmesg_xid(fixture("dmesg-xid-48-64-dbe.txt"))
    assert [(e.xid, e.pci_bus_id, e.line, e.timestamp) for e in events] == [
        (48, "00000000:07:00.0", 4, "Dec  2 11:38:47"),
        (64, "00000000:07:00.0", 5, "Dec  2 11:38:47"),
    ]
    assert events[0].message.startswith("An uncorrectable double bit error (DBE)")
    assert [e.health for e in events] == [Health.ALARM, Health.ALARM]


def test_dmesg_xid63_bare_line() -> None:
    assert parse_dmesg_xid(fixture("dmesg-xid-63-row-remap.txt")) == [
        XidEvent("00000000:10:1C.0", 63, 1896, None, "Row Remapper: New row marked for remapping, reset gpu to activate.", 1, None)
    ]


def test_dmesg_xid74_kernel_timestamp() -> None:
    (event,) = parse_dmesg_xid(fixture("dmesg-xid-74-nvlink.txt"))
    assert (event.pci_bus_id, event.xid, event.pid, event.timestamp) == ("00000003:00:00.0", 74, None, "449410.332316")
    assert event.message.startswith("NVLink: fatal error detected on link 14")


def test_dmesg_xid94_95_with_mig_instance() -> None:
    events = parse_dmesg_xid(fixture("dmesg-xid-94-95-driver-source-examples.txt"))
    assert [(e.xid, e.pid, e.line) for e in events] == [(94, 7194, 1), (94, 7062, 2), (95, 7062, 3)]
    assert {e.pci_bus_id for e in events} == {"00000000:01:00.0"}
    assert events[2].message == "Uncontained: LTC TAG (0x2,0x1). RST: Yes, D-RST: No"
    assert [e.health for e in events] == [Health.ALARM, Health.ALARM, Health.CRITICAL]


def test_dmesg_journal_iso_prefix_and_old_format() -> None:
    text = (
        "2024-04-05T21:29:39+0000 node7 kernel: NVRM: Xid (PCI:0000:3b:00): 31, pid=42, name=python, MMU Fault\n"
        "NVRM: Xid (0000:03:00): 14, Channel 00000001\n"
    )
    events = parse_dmesg_xid(text)
    assert [(e.xid, e.pci_bus_id, e.timestamp, e.process) for e in events] == [
        (31, "00000000:3B:00.0", "2024-04-05T21:29:39+0000", "python"),
        (14, "00000000:03:00.0", None, None),
    ]
    assert events[1].message == "Channel 00000001"


def test_dmesg_without_xids_is_empty() -> None:
    assert parse_dmesg_xid("") == []
    assert parse_dmesg_xid("[    0.000000] Linux version 6.8.0\n[    1.2] usb 1-1: new device\n") == []


def test_dmesg_unreadable_kernel_log_raises() -> None:
    with pytest.raises(ParseError, match="could not read the kernel log.*Operation not permitted"):
        parse_dmesg_xid("dmesg: read kernel buffer failed: Operation not permitted\n")


def test_xid_severity_table() -> None:
    assert set(XID_SEVERITY) == {13, 31, 43, 45, 48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 109, 119}
    assert xid_health(79) is Health.CRITICAL and xid_health(95) is Health.CRITICAL
    assert xid_health(48) is Health.ALARM and xid_health(13) is Health.WARNING
    assert xid_health(149) is Health.WARNING  # not in the table
    assert xid_health(XID_FALLEN_OFF_BUS) is Health.CRITICAL


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("0000:3b:00", "00000000:3B:00.0"), ("00000000:3B:00.0", "00000000:3B:00.0"), ("0008:00:00.0", "00000008:00:00.0")],
)
def test_normalize_pci_bus_id(raw: str, normal: str) -> None:
    assert normalize_pci_bus_id(raw) == normal


# --- failures → ParseError -----------------------------------------------------------------

DRIVER_FAILURE = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)
TOOL_PARSERS: list[Callable[[str], Any]] = [
    parse_npu_smi_info,
    parse_npu_smi_health,
    parse_npu_smi_ecc,
    parse_npu_smi_common,
    parse_npu_smi_usages,
    parse_hccn_link,
    parse_hccn_link_stat,
    parse_hccn_net_health,
    parse_nvidia_smi_csv,
    parse_nvidia_smi_q,
    parse_nvidia_smi_table,
]
ids = [p.__name__ for p in TOOL_PARSERS]


@pytest.mark.parametrize("parse", TOOL_PARSERS, ids=ids)
@pytest.mark.parametrize("text", ["", "\n  \n\t\n"])
def test_empty_output_raises(parse: Callable[[str], Any], text: str) -> None:
    with pytest.raises(ParseError, match="printed nothing; expected"):
        parse(text)


@pytest.mark.parametrize("parse", TOOL_PARSERS, ids=ids)
@pytest.mark.parametrize(
    "text",
    [
        "bash: npu-smi: command not found\n",
        DRIVER_FAILURE,
        "No devices were found\n",
        "dcmi model initialized failed, because the device is used. ret is -8020\n",
        "Failed to initialize NVML: Driver/library version mismatch\n",
    ],
)
def test_tool_failure_messages_raise_with_the_message(parse: Callable[[str], Any], text: str) -> None:
    with pytest.raises(ParseError, match="reported an error instead of") as info:
        parse(text)
    assert text.strip()[:40] in str(info.value)


@pytest.mark.parametrize("parse", TOOL_PARSERS, ids=ids)
def test_another_tools_output_raises_naming_what_was_expected(parse: Callable[[str], Any]) -> None:
    other = fixture("dmesg-xid-48-64-dbe.txt")
    with pytest.raises(ParseError, match="output does not contain .*; it begins \\(line 1: 'Dec  2 11:38:27"):
        parse(other)


def test_npu_table_fed_to_nvidia_parsers_and_back() -> None:
    with pytest.raises(ParseError, match="^nvidia-smi: output does not contain the GPU table"):
        parse_nvidia_smi_table(fixture("npu-smi-info-910b2-23.0.7.txt"))
    with pytest.raises(ParseError, match="^npu-smi info: output does not contain the npu-smi info chip table"):
        parse_npu_smi_info(fixture("nvidia-smi-h100-550.90.07.txt"))


def test_npu_table_header_without_chips() -> None:
    text = "\n".join(fixture("npu-smi-info-910b2-23.0.7.txt").splitlines()[:6])
    with pytest.raises(ParseError, match="header but no chip rows"):
        parse_npu_smi_info(text)


def test_npu_table_cut_mid_chip_names_the_line() -> None:
    text = "\n".join(fixture("npu-smi-info-910b2-23.0.7.txt").splitlines()[:10])
    with pytest.raises(ParseError, match=r"a chip entry has 1 table row\(s\) but each chip takes 2 \(output cut short\?\) \(line 10"):
        parse_npu_smi_info(text)


def test_npu_table_bad_npu_id() -> None:
    text = fixture("npu-smi-info-910b2-23.0.7.txt").replace("| 3     910B2 ", "| X     910B2 ")
    with pytest.raises(ParseError, match="NPU id .* not a number.*line 16"):
        parse_npu_smi_info(text)


def test_duplicate_indices_raise() -> None:
    text = fixture("npu-smi-info-910b2-23.0.7.txt").replace("| 3     910B2 ", "| 2     910B2 ")
    with pytest.raises(ParseError, match="two chips have index 2"):
        parse_npu_smi_info(text)
    with pytest.raises(ParseError, match="two chips have index 0"):
        parse_nvidia_smi_csv("index, temperature.gpu\n0, 30\n0, 31\n")


def test_out_of_range_index_raises() -> None:
    with pytest.raises(ParseError, match="out of range"):
        parse_nvidia_smi_csv("index, temperature.gpu\n5000, 30\n")


def test_parse_error_is_a_value_error_with_fields() -> None:
    with pytest.raises(ValueError) as info:
        parse_hccn_link("link status: FLAPPING")
    err = info.value
    assert isinstance(err, ParseError)
    assert (err.tool, err.line_no, err.line) == ("hccn_tool -link -g", 1, "link status: FLAPPING")


# --- lenient spacing ---------------------------------------------------------------------


def respace_table(text: str) -> str:
    """Indent with a tab, turn runs of spaces into tabs or wider runs, and draw the column
    bars with U+2502 on every other line."""
    out = []
    for i, line in enumerate(text.splitlines()):
        line = re.sub(r" {2,}", lambda m: "\t" if len(m.group()) % 2 else "   " + m.group(), line)
        if i % 2:
            line = line.replace("|", "│")
        out.append("\t  " + line + "  ")
    return "\n".join(out)


@pytest.mark.parametrize("name", sorted(n for n in PARSER_FOR if n.startswith("npu-smi-info")))
def test_npu_table_respaced(name: str) -> None:
    assert parse_npu_smi_info(respace_table(fixture(name))) == parse_npu_smi_info(fixture(name))


@pytest.mark.parametrize("name", ["nvidia-smi-h100-550.90.07.txt", "nvidia-smi-v100-460.32.03-inforom-warning.txt"])
def test_nvidia_table_respaced(name: str) -> None:
    assert parse_nvidia_smi_table(respace_table(fixture(name))) == parse_nvidia_smi_table(fixture(name))


@pytest.mark.parametrize("name", sorted(n for n in PARSER_FOR if n.startswith("nvidia-smi-q")))
def test_q_reindented_with_tabs(name: str) -> None:
    def retab(line: str) -> str:
        indent = len(line) - len(line.lstrip(" "))
        body = re.sub(r" {2,}", " ", line.strip())
        return "\t" * (indent // 4) + body

    text = "\n".join(retab(line) for line in fixture(name).splitlines())
    assert parse_nvidia_smi_q(text) == parse_nvidia_smi_q(fixture(name))


@pytest.mark.parametrize(
    "name",
    sorted(n for n in PARSER_FOR if re.match(r"npu-smi-(health|ecc|common|usages)|hccn", n)),
)
def test_key_value_output_with_tabs_and_spaces(name: str) -> None:
    # npu-smi's source prints "\t%-30s : %s"; captures show 8 spaces or none.
    tabbed = "\n".join("\t" + re.sub(r"\s+:\s*", " \t:  ", line.strip()) for line in fixture(name).splitlines())
    assert PARSER_FOR[name](tabbed) == PARSER_FOR[name](fixture(name))


@pytest.mark.parametrize("name", sorted(n for n in PARSER_FOR if n.startswith("nvidia-smi-csv")))
def test_csv_with_extra_spaces(name: str) -> None:
    spaced = "\n".join("  " + line.replace(", ", " ,   ") + "   " for line in fixture(name).splitlines())
    assert parse_nvidia_smi_csv(spaced) == parse_nvidia_smi_csv(fixture(name))


def test_dmesg_with_extra_spaces_inside_lines() -> None:
    text = fixture("dmesg-xid-48-64-dbe.txt").replace("): 48, pid=", ") :  48 ,  pid = ")
    assert [e.xid for e in parse_dmesg_xid(text)] == [48, 64]


# --- random and mangled text ---------------------------------------------------------------

ALL_PARSERS: list[Callable[[str], Any]] = TOOL_PARSERS + [parse_dmesg_xid, parse_npu_smi_info_chips, parse_nvidia_smi_csv_rows]
TABLE_ALPHABET = st.sampled_from(list("|+-=: /\t\n0123456789.CMiBWOKNA%[]") + ["│", "Xid", "NVRM:", "GPU ", "ERR!"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=400), st.lists(TABLE_ALPHABET, max_size=200).map("".join)))
@pytest.mark.parametrize("parse", ALL_PARSERS, ids=[p.__name__ for p in ALL_PARSERS])
def test_random_text_raises_only_parse_error(parse: Callable[[str], Any], text: str) -> None:
    try:
        parse(text)
    except ParseError:
        pass


@st.composite
def mangled_fixture(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(PARSER_FOR)))
    lines = fixture(name).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "cut", "insert", "swap_digit"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "insert":
            lines.insert(i, draw(st.text(max_size=60)))
        else:
            lines[i] = re.sub(r"[0-9]", lambda _: draw(st.sampled_from(["9", "", "x", "/", "99999"])), lines[i], count=1)
    return name, "\n".join(lines)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mangled_fixture())
def test_mangled_fixtures_raise_only_parse_error(case: tuple[str, str]) -> None:
    name, text = case
    try:
        result = PARSER_FOR[name](text)
    except ParseError:
        return
    # Whatever a parser returns for a mangled table still holds valid chip records.
    if isinstance(result, list) and result and isinstance(result[0], ChipStatus):
        assert all(0 <= c.index < 4096 for c in result)
        assert len({c.index for c in result}) == len(result)


# --- chip readings an operator expects (issue #12) -----------------------------------


def readings(chips: list[ChipStatus], n: int = 2) -> list[tuple[Any, ...]]:
    return [(c.index, c.power_w, c.utilisation_pct, c.hbm_used_mb, c.hbm_total_mb, c.ddr_used_mb, c.ddr_total_mb)
            for c in chips[:n]]


def test_npu_smi_info_reads_power_aicore_and_hbm_and_ddr_apart() -> None:
    # 910B2: HBM only (the DDR pair is 0 / 0, which means none).
    assert readings(parse_npu_smi_info(fixture("npu-smi-info-910b2-23.0.7.txt"))) == [
        (0, 96.5, 0.0, 29954, 65536, None, None), (1, 98.7, 0.0, 29951, 65536, None, None)]
    # 310: DDR only; memory_* falls back to it.
    chips = parse_npu_smi_info(fixture("npu-smi-info-310-21.0.4.txt"))
    assert readings(chips) == [(3, 12.8, 0.0, None, None, 2703, 8192), (4, 12.8, 0.0, None, None, 2867, 8192)]
    assert (chips[0].memory_used_mb, chips[0].memory_total_mb) == (2703, 8192)
    # A3: the second chip of a card prints power `-`: not read, not zero.
    assert readings(parse_npu_smi_info(fixture("npu-smi-info-ascend910-a3-25.2.0.txt"))) == [
        (0, 211.3, 7.0, 61609, 65536, None, None), (1, None, 7.0, 61625, 65536, None, None)]


@pytest.mark.parametrize(("name", "expected"), [
    ("npu-smi-info-headerless-910b3-excerpt.txt",
     [(3, 91.5, 0.0, 3197, 65536, None, None), (4, 90.9, 0.0, 3197, 65536, None, None)]),
    ("npu-smi-info-headerless-a3-excerpt.txt",
     [(1, None, 0.0, 61879, 65536, None, None), (2, 156.5, 0.0, 3126, 65536, None, None)]),
])
def test_npu_smi_info_pasted_without_banner_or_header_still_parses(name: str, expected: list[Any]) -> None:
    chips = parse_npu_smi_info(fixture(name))
    assert len(chips) == 4 and all(c.health is Health.OK for c in chips)
    assert readings(chips) == expected


def test_npu_smi_rows_of_the_310_layout_without_header_keep_ddr() -> None:
    table = fixture("npu-smi-info-310-21.0.4.txt")
    rows = "\n".join(line for line in table.splitlines() if re.match(r"\|\s+[0-9]", line))
    assert readings(parse_npu_smi_info(rows)) == readings(parse_npu_smi_info(table))


def test_nvidia_power_and_utilisation() -> None:
    h100 = parse_nvidia_smi_csv(fixture("nvidia-smi-csv-8xh100-535.161.07.txt"))
    assert [(c.power_w, c.utilisation_pct) for c in h100[:2]] == [(70.68, 0.0), (72.05, 0.0)]
    t4 = parse_nvidia_smi_csv(fixture("nvidia-smi-csv-4xt4-510.108.03.txt"))
    assert [(c.power_w, c.utilisation_pct) for c in t4[:2]] == [(None, 0.0), (None, 0.0)]  # power not queried
    table = parse_nvidia_smi_table(fixture("nvidia-smi-h100-550.90.07.txt"))
    assert [(c.power_w, c.utilisation_pct) for c in table[:2]] == [(92.0, 0.0), (93.0, 0.0)]
    warned = parse_nvidia_smi_table(fixture("nvidia-smi-v100-460.32.03-inforom-warning.txt"))
    assert warned[0].power_w == 43.0 and warned[0].utilisation_pct == 0.0  # kept through the warning rewrite
