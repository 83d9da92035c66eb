"""Pure parsers for the vendor tools' text: `npu-smi`, `hccn_tool`, `nvidia-smi` and the
kernel log. Text in, values out: nothing here runs a command or reads a file.

Every parser either returns values or raises `ParseError` whose message says which tool,
what was expected and which line could not be read. Probes turn that into
`Health.unknown` with the message as the reason, so it is written for on-call.

The formats handled are the ones recorded in `tests/fixtures/tools/` (provenance in its
SOURCES.md). Where a parser accepts a variant that no fixture shows, a comment says so;
such code is deliberately lenient rather than clever.

Conventions that hold for every parser here:

* Leading and trailing whitespace, tabs and runs of spaces never matter.
* "N/A", "NA", "-", "[N/A]" and "[Not Supported]" read as None (not shown), never as 0.
* Memory is reported in the tools' own megabytes: npu-smi's "MB" and nvidia-smi's "MiB"
  both land in `memory_*_mb` unchanged.
* PCI bus ids are normalised to nvidia-smi's spelling, `00000000:0A:00.0`
  (`normalize_pci_bus_id`), so kernel-log events can be matched with nvidia-smi rows.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import msgspec

from supervisor.shared.protocol import ChipStatus
from supervisor.shared.vocab import Health

# ChipStatus.index is validated on the wire (0 <= index < 4096); a parser must not build a
# record the daemon would reject as a whole heartbeat.
_MAX_CHIP_INDEX = 4095


class ParseError(ValueError):
    """The text is not readable output of the tool the parser was written for: empty, an
    error message ("command not found", "NVIDIA-SMI has failed ..."), or a table whose rows
    cannot be read. `str(error)` names the tool, the problem and the offending line."""

    def __init__(self, tool: str, problem: str, *, line_no: int | None = None, line: str | None = None) -> None:
        where = ""
        if line is not None:
            where = f" (line {line_no}: {_clip(line)!r})" if line_no else f" ({_clip(line)!r})"
        elif line_no:
            where = f" (line {line_no})"
        super().__init__(f"{tool}: {problem}{where}")
        self.tool = tool
        self.problem = problem
        self.line_no = line_no
        self.line = line


# --- shared helpers -------------------------------------------------------------------


def _clip(text: str, limit: int = 160) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) for every line."""
    return list(enumerate(text.splitlines(), start=1))


def _nonblank(text: str) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in _lines(text) if line.strip()]


# What the tools (or the shell) print instead of their output when they cannot run. Seen
# in the wild rather than in the fixtures: nvidia-smi's driver-failure and "No devices"
# messages, NVML init failure, npu-smi's dcmi init failure, and shell errors.
_FAILURE = re.compile(
    r"command not found|No such file or directory|Permission denied|Operation not permitted"
    r"|NVIDIA-SMI has failed|couldn't communicate with the NVIDIA driver|No devices were found"
    r"|Failed to initialize NVML|Driver/library version mismatch"
    r"|dcmi model initiali[sz]ed failed|dcmi module initiali[sz]e failed"
    r"|read kernel buffer failed",
    re.IGNORECASE,
)


def _reject_failure(tool: str, expected: str, text: str) -> None:
    """Raise if the text is empty or opens with an error message instead of output."""
    lines = _nonblank(text)
    if not lines:
        raise ParseError(tool, f"printed nothing; expected {expected}")
    for n, line in lines[:3]:
        if _FAILURE.search(line):
            raise ParseError(tool, f"reported an error instead of {expected}", line_no=n, line=line)


def _not_found(tool: str, expected: str, text: str) -> ParseError:
    """The error for text that has no recognisable part of the expected output."""
    lines = _nonblank(text)
    if not lines:
        return ParseError(tool, f"printed nothing; expected {expected}")
    # Quote the first line that says something: a box border tells on-call nothing.
    n, line = next(((n, l) for n, l in lines if not _is_separator(_table_line(l))), lines[0])
    return ParseError(tool, f"output does not contain {expected}; it begins", line_no=n, line=line)


_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?[0-9]{1,18}(?:\.[0-9]{1,18})?")


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if _INT.fullmatch(value) else None


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    return float(value) if _FLOAT.fullmatch(value) else None


def _leading_number(value: str | None) -> float | None:
    """`41 C`, `40536 MiB`, `55.63 W`, `0 %` → the number; anything else → None."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*([+-]?[0-9]{1,18}(?:\.[0-9]{1,18})?)\s*[A-Za-z%/()]*\s*", value)
    return float(m.group(1)) if m else None


def _as_int(number: float | None) -> int | None:
    return None if number is None else int(number)


_PCI = re.compile(
    r"(?<![0-9A-Fa-f:])([0-9A-Fa-f]{1,8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})(?:\.([0-7]))?(?![0-9A-Fa-f:])"
)


def normalize_pci_bus_id(bus_id: str) -> str:
    """`0000:3b:00`, `0000:3B:00.0` and `00000000:3B:00.0` all become `00000000:3B:00.0`.

    Kernel Xid lines omit the PCI function; GPUs are function 0, so it defaults to `.0`.
    Raises ValueError for text that holds no bus id."""
    m = _PCI.search(bus_id)
    if not m:
        raise ValueError(f"not a PCI bus id: {_clip(bus_id, 60)!r}")
    domain, bus, device, function = m.groups()
    return f"{int(domain, 16):08X}:{bus.upper()}:{device.upper()}.{function or '0'}"


def _errors(count: int) -> str:
    return f"{count} uncorrectable ECC error{'' if count == 1 else 's'}"


def _worst(contributions: list[tuple[Health, str]]) -> tuple[Health, str | None]:
    """Combine (health, reason) findings into one health and a reason naming them all."""
    if not contributions:
        return Health.OK, None
    health = Health.worst([h for h, _ in contributions])
    reason = "; ".join(r for h, r in contributions if h is not Health.OK)
    return health, reason or None


def _check_index(tool: str, index: int, line_no: int, line: str | None) -> None:
    if not 0 <= index <= _MAX_CHIP_INDEX:
        raise ParseError(tool, f"chip index {index} is out of range 0..{_MAX_CHIP_INDEX}", line_no=line_no, line=line)


def _check_unique(tool: str, indexed: list[tuple[int, int, str | None]]) -> None:
    """indexed: (index, line_no, line). Two chips with one index would overwrite each other
    downstream, hiding one of them: refuse instead."""
    seen: dict[int, int] = {}
    for index, line_no, line in indexed:
        _check_index(tool, index, line_no, line)
        if index in seen:
            raise ParseError(
                tool, f"two chips have index {index} (first on line {seen[index]})", line_no=line_no, line=line
            )
        seen[index] = line_no


# --- box-drawn tables (npu-smi info, nvidia-smi) ----------------------------------------

_VERTICALS = str.maketrans({"│": "|", "┃": "|", "║": "|", "╎": "|", "┆": "|"})
_SEPARATOR = re.compile(r"[+|=\-─━═┼╋╬╪╫├┤╞╡╟╢┌┐└┘╔╗╚╝╒╕╘╛╓╖╙╜┬┴╤╧╥╨\s]*")


def _table_line(line: str) -> str:
    # Box-drawing variants: some terminals / copies use U+2502 etc. for the column bars.
    return line.translate(_VERTICALS).strip()


def _is_separator(line: str) -> bool:
    return bool(line) and bool(_SEPARATOR.fullmatch(line)) and bool(re.search(r"[-=─━═]{3}", line))


def _cells(line: str) -> list[str] | None:
    """The raw (unstripped) cells of a `| a | b |` row, or None if the line is not a row."""
    if not line.startswith("|"):
        return None
    inner = line[1:-1] if line.endswith("|") and len(line) > 1 else line[1:]
    return inner.split("|")


# --- npu-smi info ------------------------------------------------------------------------

_NPU_HEALTH = {"ok": Health.OK, "warning": Health.WARNING, "alarm": Health.ALARM, "critical": Health.CRITICAL}


def npu_health(word: str) -> tuple[Health, str | None]:
    """npu-smi's health word → (Health, reason). OK/Warning/Alarm/Critical map one to one
    (any case); anything else (NA, UNKNOWN, NOT EXIST, blank) is `unknown`, never `ok`."""
    word = " ".join(word.split())
    health = _NPU_HEALTH.get(word.lower())
    if health is Health.OK:
        return Health.OK, None
    if health is not None:
        return health, f"npu-smi reports health {word}"
    if not word:
        return Health.UNKNOWN, "npu-smi printed no health word"
    return Health.UNKNOWN, f"npu-smi reports health {word!r}, which is not OK/Warning/Alarm/Critical"


@dataclass(frozen=True)
class NpuSmiChip:
    """One chip of the `npu-smi info` table, as printed (two table rows per chip).

    `device_id` is the per-chip column that multi-chip cards print next to `Chip`
    (`Phy-ID` on Atlas A3, `Device` on Atlas 300/310); single-chip tables have none.
    `memory_*` is the `Memory-Usage(MB)` pair (DDR), `hbm_*` the `HBM-Usage(MB)` pair.
    """

    npu_id: int
    chip_id: int | None
    device_id: int | None
    name: str | None
    health_word: str
    bus_id: str | None
    power_w: float | None
    temperature_c: float | None
    aicore_pct: float | None
    memory_used_mb: int | None
    memory_total_mb: int | None
    hbm_used_mb: int | None
    hbm_total_mb: int | None
    line: int

    @property
    def index(self) -> int:
        """The chip's trainguard index. Convention: the per-chip device id when the table
        prints one (a card with several chips: A3 `Phy-ID`, 310 `Device` — unique on the
        host, and the number the runtime's device ordinal is drawn from), otherwise the NPU
        id (one chip per NPU: 910A/910B/910ProB tables)."""
        return self.device_id if self.device_id is not None else self.npu_id

    def to_chip_status(self) -> ChipStatus:
        """HBM is the memory training uses, so it wins `memory_*` when the card reports
        any; cards without HBM (310) report their DDR `Memory-Usage` there instead. Both
        are also given separately (`hbm_*`, `ddr_*`), a card's 0 / 0 meaning "none"."""
        health, reason = npu_health(self.health_word)
        if self.hbm_total_mb:
            used, total = self.hbm_used_mb, self.hbm_total_mb
        elif self.memory_total_mb:
            used, total = self.memory_used_mb, self.memory_total_mb
        else:
            used, total = None, None
        hbm = (self.hbm_used_mb, self.hbm_total_mb) if self.hbm_total_mb else (None, None)
        ddr = (self.memory_used_mb, self.memory_total_mb) if self.memory_total_mb else (None, None)
        return ChipStatus(
            index=self.index,
            health=health,
            temperature_c=self.temperature_c,
            memory_used_mb=used,
            memory_total_mb=total,
            reason=reason,
            power_w=self.power_w,
            utilisation_pct=self.aicore_pct,
            hbm_used_mb=hbm[0],
            hbm_total_mb=hbm[1],
            ddr_used_mb=ddr[0],
            ddr_total_mb=ddr[1],
        )


# A pair like `1867 / 15077`, `29954/ 65536` or `0    / 0` is one value.
_TABLE_TOKEN = re.compile(r"[^\s/|]+\s*/\s*[^\s/|]+|\S+")


def _cell_values(fields: list[tuple[int, str]], raw: str) -> dict[str, str]:
    """Split one cell of a chip row into its sub-columns, named by the header cell above.

    fields: (offset, lower-cased name) of each header word in that cell."""
    if not fields:
        return {}
    if len(fields) == 1:
        # A one-column cell (Health, Bus-Id) is read whole: `NOT EXIST` is one value.
        return {fields[0][1]: raw.strip()}
    tokens = [(m.start(), m.group()) for m in _TABLE_TOKEN.finditer(raw)]
    names = [name for _, name in fields]
    if len(tokens) == len(fields):
        return {name: text for name, (_, text) in zip(names, tokens)}
    if len(tokens) > len(fields) and "name" in names:
        # A chip name with spaces: it takes the surplus words.
        k = names.index("name")
        extra = len(tokens) - len(fields)
        name_words = " ".join(t for _, t in tokens[k : k + extra + 1])
        merged = tokens[:k] + [(tokens[k][0], name_words)] + tokens[k + extra + 1 :]
        return {name: text for name, (_, text) in zip(names, merged)}
    # Counts differ (a blank sub-column): fall back to the header's columns. Only exact when
    # the spacing is as npu-smi printed it, which is the only case this can arise in.
    values: dict[str, str] = {}
    for start, text in tokens:
        owner = names[0]
        for offset, name in fields:
            if offset <= start + 2:
                owner = name
        values[owner] = f"{values[owner]} {text}" if owner in values else text
    return values


def _npu_pair(value: str | None) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    m = re.fullmatch(r"\s*([0-9]{1,18})\s*/\s*([0-9]{1,18})\s*", value)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def _pick(values: dict[str, str], *prefixes: str) -> str | None:
    for name, value in values.items():
        if any(name.startswith(p) for p in prefixes):
            return value
    return None


_NPU_TOOL = "npu-smi info"
_NPU_EXPECTED = "the npu-smi info chip table (a header row with NPU, Name and Health)"


def parse_npu_smi_info_chips(text: str) -> list[NpuSmiChip]:
    """Every chip of the `npu-smi info` summary table, as printed.

    Reads the table whose header has `NPU ... | Health | ...`; columns are found by the
    header's words, so unknown columns are ignored and a missing one reads as None. The
    process table below it (`NPU Chip | Process id | ...`) is never read as chips."""
    _reject_failure(_NPU_TOOL, _NPU_EXPECTED, text)
    header: list[list[list[tuple[int, str]]]] = []  # per header row, per cell: (offset, name)
    groups: list[list[tuple[int, str, list[str]]]] = []
    current: list[tuple[int, str, list[str]]] | None = None
    state = "before"
    for line_no, raw_line in _lines(text):
        line = _table_line(raw_line)
        cells = _cells(line)
        if state == "before":
            if cells and cells[0].split()[:1] and cells[0].split()[0].lower() == "npu" and any(
                c.strip().lower().startswith("health") for c in cells
            ):
                state = "header"
            else:
                continue
        if state == "header":
            if cells is not None and not _is_separator(line):
                header.append([[(m.start(), m.group().lower()) for m in re.finditer(r"\S+", c)] for c in cells])
                continue
            state = "data"
            continue
        # state == "data"
        if _is_separator(line):
            current = None
            continue
        if cells is None:
            continue  # stray text between rows (a warning, a prompt): not a table row
        if any("process id" in c.lower() or "process name" in c.lower() for c in cells):
            break  # the process table starts; its rows are not chips
        if not any(c.strip() for c in cells):
            continue
        if current is None:
            current = []
            groups.append(current)
        current.append((line_no, line, cells))
    if not header:
        headerless = _with_inferred_header(text)
        if headerless is not None:
            return parse_npu_smi_info_chips(headerless)
        raise _not_found(_NPU_TOOL, _NPU_EXPECTED, text)

    chips: list[NpuSmiChip] = []
    rows_per_chip = len(header)
    for group in groups:
        if len(group) % rows_per_chip:
            line_no, line, _ = group[-1]
            raise ParseError(
                _NPU_TOOL,
                f"a chip entry has {len(group)} table row(s) but each chip takes {rows_per_chip}"
                " (output cut short?)",
                line_no=line_no,
                line=line,
            )
        for start in range(0, len(group), rows_per_chip):
            chips.append(_npu_chip(header, group[start : start + rows_per_chip]))
    if not chips:
        raise ParseError(_NPU_TOOL, "the chip table has a header but no chip rows (is the driver loaded?)")
    _check_unique(_NPU_TOOL, [(c.index, c.line, None) for c in chips])
    return chips


def _npu_chip(header: list[list[list[tuple[int, str]]]], rows: list[tuple[int, str, list[str]]]) -> NpuSmiChip:
    values: dict[str, str] = {}
    for header_row, (_, _, cells) in zip(header, rows):
        for fields, raw in zip(header_row, cells):
            values.update(_cell_values(fields, raw))
    line_no, line, _ = rows[0]
    npu_id = _int(values.get("npu"))
    if npu_id is None:
        raise ParseError(_NPU_TOOL, "the NPU id of a chip row is not a number", line_no=line_no, line=line)
    # `Phy-ID` (A3, 25.x) and `Device` (310, 21.x) are the per-chip ids seen in the
    # fixtures; `Logic-ID` / `Device-ID` are accepted in case a release renames it.
    device_id = _int(_pick(values, "phy-id", "device", "logic-id"))
    bus = values.get("bus-id")
    try:
        bus_id = normalize_pci_bus_id(bus) if bus else None
    except ValueError:
        bus_id = None
    memory_used, memory_total = _npu_pair(_pick(values, "memory-usage"))
    hbm_used, hbm_total = _npu_pair(_pick(values, "hbm-usage"))
    name = values.get("name")
    return NpuSmiChip(
        npu_id=npu_id,
        chip_id=_int(values.get("chip")),
        device_id=device_id,
        name=name or None,
        health_word=" ".join(values.get("health", "").split()),
        bus_id=bus_id,
        power_w=_float(_pick(values, "power")),
        temperature_c=_float(_pick(values, "temp")),
        aicore_pct=_float(_pick(values, "aicore")),
        memory_used_mb=memory_used,
        memory_total_mb=memory_total,
        hbm_used_mb=hbm_used,
        hbm_total_mb=hbm_total,
        line=line_no,
    )


# The column headers npu-smi prints, by layout (from the fixtures): multi-chip cards
# (Atlas A3: `Chip  Phy-ID`), one chip per NPU with HBM (910A/910B/910ProB), and the older
# 310 cards with `Chip  Device` and no HBM column. Used only for excerpts pasted without
# their header (as people paste them into issues and chats).
_NPU_HEADERS = {
    "phy-id": ("| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|\n"
               "| Chip  Phy-ID              | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |"),
    "hbm": ("| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|\n"
            "| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |"),
    "device": ("| NPU     Name      | Health          | Power(W)          Temp(C)              Hugepages-Usage(page) |\n"
               "| Chip    Device    | Bus-Id          | AICore(%)         Memory-Usage(MB)                           |"),
}
_CHIP_ROW = re.compile(r"\|\s*[0-9]{1,4}(?:\s+(?P<second>[0-9]{1,4}))?\s*\|\s*(?:[0-9A-Fa-f]{4,8}:)?[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]\s*\|")


def _with_inferred_header(text: str) -> str | None:
    """`text` with the column header of its layout put back, when it is chip rows without
    one: an NPU row (`| id  name | health | ...`) followed by its chip row (`| chip
    [device] | bus id | ...`). The layout is read from the chip row: a second id column
    is A3's Phy-ID or 310's Device (told apart by a missing HBM pair), else the 910 one."""
    lines = [_table_line(raw) for _, raw in _lines(text)]
    for first, second in zip(lines, lines[1:]):
        cells = _cells(first)
        m = _CHIP_ROW.match(second)
        if not cells or len(cells) < 3 or not m or not re.match(r"\s*[0-9]{1,4}\s+\S", cells[0]):
            continue
        pairs = len(re.findall(r"[0-9]+\s*/\s*[0-9]+", (_cells(second) or [""])[-1]))
        if m.group("second") is None:
            layout = "hbm"
        else:
            layout = "phy-id" if pairs >= 2 else "device"
        return _NPU_HEADERS[layout] + "\n+" + "=" * 20 + "+\n" + text
    return None


def parse_npu_smi_info(text: str) -> list[ChipStatus]:
    """`npu-smi info` → one ChipStatus per chip (see `NpuSmiChip.index` for the index
    convention on multi-chip cards)."""
    return [chip.to_chip_status() for chip in parse_npu_smi_info_chips(text)]


# --- npu-smi info -t health | ecc | common | usages ------------------------------------


def _snake(key: str) -> str:
    """`Temperature(C)` → `temperature_c`, `Memory Usage Rate(%)` → `memory_usage_rate_pct`."""
    key = key.replace("%", " pct ")
    key = re.sub(r"[^0-9A-Za-z]+", "_", key)
    return key.strip("_").lower()


def _kv_value(value: str) -> Any:
    value = value.strip()
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


@dataclass
class _KeyValues:
    fields: dict[str, Any]
    components: dict[str, dict[str, Any]]
    raw: list[tuple[int, str, str]]  # (line_no, key, value) of the main block, in order
    loose: list[tuple[int, str]]  # lines without a `:`


def _key_values(text: str) -> _KeyValues:
    """`Key : Value` lines, leading whitespace / tabs stripped, split on the first `:`.

    A `Chip Name : mcu` line starts a component block (the board MCU printed after the
    chip in `-t common`); its keys go to `components["mcu"]` so its temperature is not
    taken for the chip's. When a key repeats in the main block the first one wins."""
    fields: dict[str, Any] = {}
    components: dict[str, dict[str, Any]] = {}
    raw: list[tuple[int, str, str]] = []
    loose: list[tuple[int, str]] = []
    target = fields
    for line_no, line in _lines(text):
        line = line.strip()
        if not line:
            continue
        if ":" not in line:
            loose.append((line_no, line))
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        if not key:
            loose.append((line_no, line))
            continue
        name = _snake(key)
        if name == "chip_name":
            target = components.setdefault(value.strip().lower() or "component", {})
            continue
        if target is fields:
            raw.append((line_no, key, value))
        target.setdefault(name, _kv_value(value))
    return _KeyValues(fields, components, raw, loose)


def _first_of(fields: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in fields:
            return fields[name]
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_npu_smi_health(text: str) -> dict[str, Any]:
    """`npu-smi info -t health -i N [-c C]` → {health, health_word, error_codes,
    error_information, reason}.

    `error_codes` is a tuple of hex strings (`NA` → empty). npu-smi prints every code as
    ` %04X` after `Error Code :` and one description per code after `Error Information :`
    (per its source; only the healthy `OK / NA / NA` capture exists), so codes are the
    whitespace-separated words of that value, and description lines without a `:` that
    follow are joined to the information."""
    tool, expected = "npu-smi info -t health", "a 'Health Status : ...' line"
    _reject_failure(tool, expected, text)
    kv = _key_values(text)
    word = _first_of(kv.fields, "health_status", "health")
    if word is None:
        raise _not_found(tool, expected, text)
    word = str(word)
    health, reason = npu_health(word)
    # The raw text, not the typed value: `0001` must keep its zeros.
    codes_text = next((v for _, k, v in kv.raw if _snake(k) in ("error_code", "error_codes")), "")
    codes = tuple(
        c.upper() for c in re.split(r"[\s,;]+", codes_text) if c and c.lower() not in ("na", "n/a", "-")
    )
    info_lines: list[str] = []
    info_line_no = None
    for line_no, key, value in kv.raw:
        if _snake(key) == "error_information":
            info_line_no = line_no
            if value.strip().lower() not in ("na", "n/a", "-", ""):
                info_lines.append(value.strip())
    if info_line_no is not None:
        info_lines += [line for n, line in kv.loose if n > info_line_no]
    information = "; ".join(info_lines) or None
    if health is not Health.OK:
        if codes:
            reason = f"{reason}, error codes {' '.join(codes)}"
        if information:
            reason = f"{reason}: {information}"
    return {
        "health": health,
        "health_word": word,
        "error_codes": codes,
        "error_information": information,
        "reason": reason,
    }


def parse_npu_smi_ecc(text: str) -> dict[str, Any]:
    """`npu-smi info -t ecc -i N` → every counter as a snake_case field, plus totals:

    * `ecc_correctable` / `ecc_uncorrectable`: the current single-bit / double-bit error
      counts, DDR + HBM (the `... Bit Error Count` lines);
    * `ecc_correctable_aggregate` / `ecc_uncorrectable_aggregate`: the lifetime
      `... Bit Aggregate Total Err Cnt` lines;
    * `isolated_pages`: single + double bit isolated pages, DDR + HBM.

    Counters that read `NA` are left out of the sums; a sum with no counters is None."""
    tool, expected = "npu-smi info -t ecc", "ECC counters ('... Bit Error Count : N')"
    _reject_failure(tool, expected, text)
    kv = _key_values(text)
    counters = {k: v for k, v in kv.fields.items() if "bit" in k and ("err" in k or "pages" in k)}
    if not any(k.endswith("bit_error_count") for k in counters):
        raise _not_found(tool, expected, text)

    def total(pattern: str) -> int | None:
        found = [v for k, v in counters.items() if re.search(pattern, k) and isinstance(v, int)]
        return sum(found) if found else None

    return {
        "npu_id": _first_of(kv.fields, "npu_id"),
        "chip_id": _first_of(kv.fields, "chip_id"),
        "ecc_correctable": total(r"single_bit_error_count$"),
        "ecc_uncorrectable": total(r"double_bit_error_count$"),
        "ecc_correctable_aggregate": total(r"single_bit_aggregate_total_err_cnt$"),
        "ecc_uncorrectable_aggregate": total(r"double_bit_aggregate_total_err_cnt$"),
        "isolated_pages": total(r"bit_isolated_pages_count$"),
        "fields": kv.fields,
    }


def parse_npu_smi_common(text: str) -> dict[str, Any]:
    """`npu-smi info -t common -i N` → {npu_id, chip_id, temperature_c, power_w,
    aicore_usage_pct, memory_usage_pct, hbm_usage_pct, health, health_word, fields,
    components}. `health` is None unless the output has a health line; `components`
    holds the blocks after `Chip Name : <name>` (the board MCU's own temperature)."""
    tool, expected = "npu-smi info -t common", "chip readings (Temperature / Aicore / Memory usage lines)"
    _reject_failure(tool, expected, text)
    kv = _key_values(text)
    f = kv.fields
    reading = {
        "temperature_c": _number(_first_of(f, "temperature_c", "temperature")),
        "aicore_usage_pct": _number(_first_of(f, "aicore_usage_rate_pct", "aicore_usage_pct")),
        "memory_usage_pct": _number(_first_of(f, "memory_usage_rate_pct", "memory_usage_pct")),
        "hbm_usage_pct": _number(_first_of(f, "hbm_usage_rate_pct", "hbm_usage_pct")),
    }
    if all(v is None for v in reading.values()):
        raise _not_found(tool, expected, text)
    word = _first_of(f, "health_status", "health")
    return {
        "npu_id": _first_of(f, "npu_id"),
        "chip_id": _first_of(f, "chip_id"),
        **reading,
        "power_w": _number(_first_of(f, "npu_real_time_power_w", "power_w")),
        "health": None if word is None else npu_health(str(word))[0],
        "health_word": None if word is None else str(word),
        "fields": f,
        "components": kv.components,
    }


def parse_npu_smi_usages(text: str) -> dict[str, Any]:
    """`npu-smi info -t usages -i N` → {npu_id, chip_id, hbm_capacity_mb, hbm_usage_pct,
    ddr_capacity_mb, ddr_usage_pct, aicore_usage_pct, fields}."""
    tool, expected = "npu-smi info -t usages", "usage lines ('... Usage Rate(%) : N')"
    _reject_failure(tool, expected, text)
    kv = _key_values(text)
    f = kv.fields
    if not any(k.endswith("usage_rate_pct") for k in f):
        raise _not_found(tool, expected, text)
    return {
        "npu_id": _first_of(f, "npu_id"),
        "chip_id": _first_of(f, "chip_id"),
        "hbm_capacity_mb": _first_of(f, "hbm_capacity_mb"),
        "hbm_usage_pct": _number(_first_of(f, "hbm_usage_rate_pct")),
        "ddr_capacity_mb": _first_of(f, "ddr_capacity_mb"),
        "ddr_usage_pct": _number(_first_of(f, "ddr_usage_rate_pct")),
        "aicore_usage_pct": _number(_first_of(f, "aicore_usage_rate_pct")),
        "fields": f,
    }


# --- hccn_tool ---------------------------------------------------------------------------


def parse_hccn_link(text: str) -> str:
    """`hccn_tool -i N -link -g` (`link status: UP`) → "up" or "down".

    Only `UP` was captured; `DOWN` is the spelling the Ascend device plugin checks for.
    Any other word raises: a link we cannot read is not a link we know is up."""
    tool, expected = "hccn_tool -link -g", "a 'link status: UP|DOWN' line"
    _reject_failure(tool, expected, text)
    for line_no, line in _nonblank(text):
        m = re.search(r"link\s+status\s*:\s*(\S*)", line, re.IGNORECASE)
        if m:
            word = m.group(1).lower()
            if word in ("up", "down"):
                return word
            raise ParseError(tool, "link status is neither UP nor DOWN", line_no=line_no, line=line)
    raise _not_found(tool, expected, text)


def parse_hccn_link_stat(text: str) -> dict[str, Any]:
    """`hccn_tool -i N -link_stat -g` → {device, current_time, link_up_count, changes}.
    `changes` is ((time as printed, "up" | "down"), ...), newest first as printed."""
    tool, expected = "hccn_tool -link_stat -g", "'link up count' or 'LINK UP/DOWN' records"
    _reject_failure(tool, expected, text)
    device = current_time = link_up_count = None
    changes: list[tuple[str, str]] = []
    for _, line in _nonblank(text):
        m = re.match(r"\[device\s+([0-9]{1,6})\]\s*(.*)$", line, re.IGNORECASE)
        if m:
            device = int(m.group(1)) if device is None else device
            line = m.group(2).strip()
        record = re.fullmatch(r"(.*?)\s*LINK\s+(UP|DOWN)", line, re.IGNORECASE)
        if record:
            changes.append((record.group(1).strip(), record.group(2).lower()))
            continue
        if ":" in line:
            key, value = (p.strip() for p in line.split(":", 1))
            name = _snake(key)
            if name == "current_time":
                current_time = value
            elif name == "link_up_count":
                link_up_count = _int(value)
    if link_up_count is None and not changes:
        raise _not_found(tool, expected, text)
    return {"device": device, "current_time": current_time, "link_up_count": link_up_count, "changes": tuple(changes)}


def parse_hccn_net_health(text: str) -> str:
    """`hccn_tool -i N -net_health -g` → the status as printed (`Init`, `Success`, ...)."""
    tool, expected = "hccn_tool -net_health -g", "a 'net health status: ...' line"
    _reject_failure(tool, expected, text)
    for _, line in _nonblank(text):
        m = re.search(r"net\s+health\s+status\s*:\s*(.*\S)", line, re.IGNORECASE)
        if m:
            return m.group(1)
    raise _not_found(tool, expected, text)


# --- nvidia-smi --query-gpu=... --format=csv --------------------------------------------

_CSV_TOOL = "nvidia-smi --query-gpu"
_CSV_EXPECTED = "a CSV header of query fields (index, temperature.gpu, ...)"
_CSV_FIELD = re.compile(r"[a-z_][a-z0-9_.]*(?:\s*\[[^\]]*\])?")
# `[N/A]` / `[Not Supported]` mean "this GPU has no such reading". Other bracketed values
# are nvidia-smi failing to read a GPU (`[Unknown Error]`, `[GPU is lost]`): not in the
# fixtures, handled as CsvProblem so the GPU is not reported as healthy.
_CSV_ABSENT = {"[n/a]", "n/a", "[not supported]", "not supported", ""}


@dataclass(frozen=True)
class CsvProblem:
    """A bracketed error value in a CSV cell, such as `[Unknown Error]`."""

    text: str


def _csv_value(raw: str) -> Any:
    value = raw.strip()
    if value.lower() in _CSV_ABSENT:
        return None
    if value.startswith("[") and value.endswith("]"):
        return CsvProblem(value)
    # `81559 MiB`, `0 %`, `70.89 W` with plain --format=csv; bare numbers with nounits.
    m = re.fullmatch(r"([+-]?[0-9]{1,18})(\.[0-9]{1,18})?\s*(?:MiB|MB|GiB|KiB|%|W|MHz|C|KB/s)?", value)
    if m:
        return float(m.group(1) + m.group(2)) if m.group(2) else int(m.group(1))
    return value


def _csv_header(fields: Sequence[str]) -> list[str]:
    return [re.sub(r"\s*\[[^\]]*\]\s*$", "", f.strip()) for f in fields]


def _is_csv_header(fields: Sequence[str]) -> bool:
    return bool(fields) and all(_CSV_FIELD.fullmatch(f.strip()) for f in fields)


def parse_nvidia_smi_csv_rows(text: str, fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every row of `nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]` as
    {query field: value}: numbers with their units stripped, N/A → None, other text as is.

    Output printed with `noheader` has no names: pass the `fields` that were queried. When
    both are present the printed header must match them."""
    _reject_failure(_CSV_TOOL, _CSV_EXPECTED, text)
    lines = _nonblank(text)
    try:
        parsed = [(n, line, next(csv.reader([line], skipinitialspace=True), [])) for n, line in lines]
    except csv.Error as exc:
        raise ParseError(_CSV_TOOL, f"output is not CSV ({exc})") from None
    header_no, header_line, first = parsed[0]
    if _is_csv_header(first):
        names = _csv_header(first)
        if fields is not None and names != _csv_header(fields):
            raise ParseError(
                _CSV_TOOL,
                f"header does not match the queried fields {list(fields)}",
                line_no=header_no,
                line=header_line,
            )
        rows = parsed[1:]
    elif fields is not None:
        names = _csv_header(fields)
        rows = parsed
    else:
        raise _not_found(_CSV_TOOL, _CSV_EXPECTED + " (noheader output needs the queried field names)", text)
    if not rows:
        raise ParseError(_CSV_TOOL, "printed a header but no GPU rows (no GPU visible?)")
    result = []
    for n, line, values in rows:
        if len(values) != len(names):
            raise ParseError(
                _CSV_TOOL, f"a row has {len(values)} values but there are {len(names)} fields", line_no=n, line=line
            )
        row = {name: _csv_value(v) for name, v in zip(names, values)}
        row["_line"] = n
        result.append(row)
    return result


def _csv_count(row: dict[str, Any], kind: str) -> tuple[int | None, str]:
    """ECC count of one kind (`corrected` / `uncorrected`): volatile (since the driver
    loaded) when printed, else aggregate (lifetime). Returns (count, which)."""
    for scope in ("volatile", "aggregate"):
        value = row.get(f"ecc.errors.{kind}.{scope}.total")
        if isinstance(value, (int, float)):
            return int(value), scope
    return None, ""


def _yes(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "true", "1")
    return value == 1


def parse_nvidia_smi_csv(text: str, fields: Sequence[str] | None = None) -> list[ChipStatus]:
    """`nvidia-smi --query-gpu=... --format=csv` → one ChipStatus per row.

    Index: the `index` column, or the row's position when it was not queried (nvidia-smi
    prints GPUs in index order). Health:

    * volatile uncorrected ECC (`ecc.errors.uncorrected.volatile.total`) > 0 → alarm;
    * only the aggregate (lifetime) count printed and > 0 → warning;
    * `retired_pages.pending`, `remapped_rows.pending` or `remapped_rows.failure` = Yes →
      alarm (these columns are in no fixture; accepted because they are the same format);
    * a bracketed error value (`[Unknown Error]`) → unknown, `[GPU is lost]` → critical;
    * otherwise ok.
    `ecc_*` carry the volatile counts, or the aggregate ones when volatile is not printed;
    `power_w` is `power.draw` (or `.instant`, `.average`), `utilisation_pct` `utilization.gpu`."""
    chips = []
    indexed = []
    for position, row in enumerate(parse_nvidia_smi_csv_rows(text, fields)):
        line_no = row["_line"]
        index = row.get("index", position)
        if not isinstance(index, int):
            raise ParseError(_CSV_TOOL, f"GPU index {index!r} is not a number", line_no=line_no, line=str(index))
        indexed.append((index, line_no, f"index {index}"))
        findings: list[tuple[Health, str]] = []
        uncorrected, scope = _csv_count(row, "uncorrected")
        corrected, _ = _csv_count(row, "corrected")
        if uncorrected:
            if scope == "volatile":
                findings.append((Health.ALARM, f"{_errors(uncorrected)} since the driver loaded"))
            else:
                findings.append(
                    (Health.WARNING, f"{_errors(uncorrected)} in the GPU's lifetime (aggregate)")
                )
        if _yes(row.get("retired_pages.pending")):
            findings.append((Health.ALARM, "a retired page is pending: reset the GPU to retire it"))
        if _yes(row.get("remapped_rows.pending")):
            findings.append((Health.ALARM, "row remapping is pending: reset the GPU to activate it"))
        if _yes(row.get("remapped_rows.failure")):
            findings.append((Health.ALARM, "row remapping failed"))
        for name, value in row.items():
            if isinstance(value, CsvProblem):
                lost = "gpu is lost" in value.text.lower()
                level = Health.CRITICAL if lost else Health.UNKNOWN
                findings.append((level, f"nvidia-smi printed {value.text} for {name}"))
        health, reason = _worst(findings)
        temperature = row.get("temperature.gpu")
        used, total = row.get("memory.used"), row.get("memory.total")
        power = next((row[k] for k in ("power.draw", "power.draw.instant", "power.draw.average")
                      if isinstance(row.get(k), (int, float))), None)
        utilisation = row.get("utilization.gpu")
        chips.append(
            ChipStatus(
                index=index,
                health=health,
                temperature_c=float(temperature) if isinstance(temperature, (int, float)) else None,
                memory_used_mb=int(used) if isinstance(used, (int, float)) else None,
                memory_total_mb=int(total) if isinstance(total, (int, float)) else None,
                ecc_uncorrectable=uncorrected or 0,
                ecc_correctable=corrected or 0,
                reason=reason,
                power_w=float(power) if power is not None else None,
                utilisation_pct=float(utilisation) if isinstance(utilisation, (int, float)) else None,
            )
        )
    _check_unique(_CSV_TOOL, indexed)
    return chips


# --- nvidia-smi -q -----------------------------------------------------------------------

_Q_TOOL = "nvidia-smi -q"
_Q_EXPECTED = "GPU records ('GPU 00000000:xx:yy.z' blocks or their sections)"
_Q_GPU = re.compile(r"GPU\s+([0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])")
_Q_SECTIONS = ("ecc errors", "fb memory usage", "temperature", "retired pages", "remapped rows")


def _q_blocks(text: str) -> list[tuple[int, str | None, dict[tuple[str, ...], str]]]:
    """Split -q output into GPU blocks of {(section, ..., key): value}, paths lower-cased
    and relative to the block. Nesting follows indentation (any consistent indent)."""
    blocks: list[tuple[int, str | None, dict[tuple[str, ...], str]]] = []
    preamble: dict[tuple[str, ...], str] = {}
    target = preamble
    stack: list[tuple[int, str]] = []
    for line_no, raw in _lines(text):
        stripped = raw.strip()
        if not stripped:
            continue
        indent = len(raw) - len(raw.lstrip())
        m = _Q_GPU.fullmatch(stripped)
        if m:
            target = {}
            blocks.append((line_no, normalize_pci_bus_id(m.group(1)), target))
            stack = []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if ":" in stripped:
            key, value = stripped.split(":", 1)
            path = tuple(name for _, name in stack) + (" ".join(key.split()).lower(),)
            target.setdefault(path, value.strip())
        else:
            stack.append((indent, " ".join(stripped.split()).lower()))
    if not blocks and any(path[0] in _Q_SECTIONS for path in preamble if len(path) > 1):
        # An excerpt without its `GPU ...` line (a pasted ECC section): one GPU, index 0,
        # if anything in it is readable (checked by the caller).
        blocks.append((0, None, preamble))
    return blocks


def _q_sum(items: list[str]) -> int | None:
    numbers = [int(v) for v in items if _INT.fullmatch(v.strip())]
    return sum(numbers) if numbers else None


def _q_ecc(block: dict[tuple[str, ...], str], scope: str) -> tuple[int | None, int | None]:
    """(correctable, uncorrectable) for `volatile` or `aggregate`.

    Ampere and later print `SRAM/DRAM Correctable` and `SRAM/DRAM Uncorrectable`
    (fixtures); newer drivers split SRAM Uncorrectable into `Parity` / `SEC-DED`, older
    GPUs print `Single Bit` / `Double Bit` sub-blocks with a `Total` (neither is in a
    fixture: summed by the same rule / read from `Total`)."""
    prefix = ("ecc errors", scope)
    flat = {path[2]: v for path, v in block.items() if path[:2] == prefix and len(path) == 3}
    correctable = _q_sum([v for k, v in flat.items() if "correctable" in k and "uncorrectable" not in k])
    uncorrectable = _q_sum([v for k, v in flat.items() if "uncorrectable" in k])
    if correctable is None:
        correctable = _q_sum([block.get(prefix + ("single bit", "total"), "")])
    if uncorrectable is None:
        uncorrectable = _q_sum([block.get(prefix + ("double bit", "total"), "")])
    return correctable, uncorrectable


def parse_nvidia_smi_q(text: str) -> list[ChipStatus]:
    """`nvidia-smi -q` → one ChipStatus per `GPU <bus id>` block; an excerpt with no GPU
    line but with a known section is read as GPU 0.

    Index: the block's position (-q prints GPUs in nvidia-smi index order and has no index
    field; `Minor Number` is the /dev/nvidiaN number, not the index). Health:

    * volatile uncorrectable ECC > 0 → alarm (aggregate only, when volatile is N/A → warning);
    * Retired Pages pending, Remapped Rows `Pending: Yes` or `Remapping Failure Occurred:
      Yes` → alarm;
    * a block with none of temperature, memory or ECC readable → unknown.
    `ecc_*` carry the volatile counts (aggregate when volatile is not printed)."""
    _reject_failure(_Q_TOOL, _Q_EXPECTED, text)
    blocks = _q_blocks(text)
    if not blocks:
        raise _not_found(_Q_TOOL, _Q_EXPECTED, text)
    chips = []
    for index, (line_no, bus_id, block) in enumerate(blocks):
        _check_index(_Q_TOOL, index, line_no, bus_id or "")
        findings: list[tuple[Health, str]] = []
        vol_c, vol_u = _q_ecc(block, "volatile")
        agg_c, agg_u = _q_ecc(block, "aggregate")
        if vol_u:
            detail = f"; {agg_u} in its lifetime" if agg_u else ""
            findings.append((Health.ALARM, f"{_errors(vol_u)} since the driver loaded{detail}"))
        elif vol_u is None and agg_u:
            findings.append((Health.WARNING, f"{_errors(agg_u)} in the GPU's lifetime (aggregate)"))
        flags = {path: v.strip().lower() for path, v in block.items() if len(path) == 2}
        # `Pending Page Blacklist` (fixtures) was renamed `Pending Page Retirement` later.
        if any(p[0] == "retired pages" and "pending" in p[1] and v == "yes" for p, v in flags.items()):
            findings.append((Health.ALARM, "a retired page is pending: reset the GPU to retire it"))
        if flags.get(("remapped rows", "pending")) == "yes":
            findings.append((Health.ALARM, "row remapping is pending: reset the GPU to activate it"))
        if flags.get(("remapped rows", "remapping failure occurred")) == "yes":
            findings.append((Health.ALARM, "row remapping failed"))
        temperature = _leading_number(block.get(("temperature", "gpu current temp")))
        used = _as_int(_leading_number(block.get(("fb memory usage", "used"))))
        total = _as_int(_leading_number(block.get(("fb memory usage", "total"))))
        readable = [temperature, used, total, vol_c, vol_u, agg_c, agg_u] + [
            v for p, v in flags.items() if p[0] in ("retired pages", "remapped rows")
        ]
        if all(v is None for v in readable):
            if bus_id is None:  # a headless excerpt with nothing in it: not -q output
                raise _not_found(_Q_TOOL, _Q_EXPECTED, text)
            findings.append((Health.UNKNOWN, "nvidia-smi -q showed no temperature, memory or ECC reading for this GPU"))
        health, reason = _worst(findings)
        chips.append(
            ChipStatus(
                index=index,
                health=health,
                temperature_c=temperature,
                memory_used_mb=used,
                memory_total_mb=total,
                ecc_uncorrectable=(vol_u if vol_u is not None else agg_u) or 0,
                ecc_correctable=(vol_c if vol_c is not None else agg_c) or 0,
                reason=reason,
            )
        )
    return chips


# --- nvidia-smi (default table) ----------------------------------------------------------

_TABLE_TOOL = "nvidia-smi"
_TABLE_EXPECTED = "the GPU table (rows with a GPU index and a PCI bus id)"


_GPU_ROW_INDEX = re.compile(r"\s*([0-9]{1,6})\s+\S")


def _is_gpu_row(cells: list[str]) -> bool:
    return len(cells) >= 3 and bool(_GPU_ROW_INDEX.match(cells[0])) and bool(_PCI.search(cells[1]))


def parse_nvidia_smi_table(text: str) -> list[ChipStatus]:
    """The default `nvidia-smi` table (old 2-row and new 3-row layouts) → one ChipStatus
    per GPU: index, temperature, memory usage and the `Volatile Uncorr. ECC` column.

    Health: ECC column `ERR!` → critical; a count > 0 → alarm; `N/A` (no ECC) or 0 → ok;
    `ERR!` in any other field → warning. A trailing `WARNING: infoROM is corrupted at gpu
    <bus id>` line makes that GPU a warning; warning lines naming no known GPU are ignored.
    The process table is not read."""
    _reject_failure(_TABLE_TOOL, _TABLE_EXPECTED, text)
    records: list[list[tuple[int, str, list[str]]]] = []
    current: list[tuple[int, str, list[str]]] | None = None
    warnings: list[tuple[int, str]] = []
    for line_no, raw in _lines(text):
        line = _table_line(raw)
        if re.match(r"warning\s*:", line, re.IGNORECASE):
            warnings.append((line_no, line))
            current = None
            continue
        cells = _cells(line)
        if _is_separator(line) or cells is None:
            current = None
            continue
        if "processes:" in line.lower():
            current = None
            continue  # process rows never match a GPU row; keep scanning for warnings
        if _is_gpu_row(cells):
            current = [(line_no, line, cells)]
            records.append(current)
        elif current is not None:
            current.append((line_no, line, cells))
    if not records:
        raise _not_found(_TABLE_TOOL, _TABLE_EXPECTED, text)

    chips: list[tuple[ChipStatus, str]] = []
    indexed = []
    for record in records:
        line_no, line, first = record[0]
        index = int(_GPU_ROW_INDEX.match(first[0]).group(1))  # type: ignore[union-attr]
        indexed.append((index, line_no, line))
        bus_id = normalize_pci_bus_id(first[1])
        findings: list[tuple[Health, str]] = []
        ecc_words = first[2].split()
        ecc_word = ecc_words[-1] if ecc_words else ""
        uncorrectable = 0
        if ecc_word.upper() == "ERR!":
            findings.append((Health.CRITICAL, "nvidia-smi shows ERR! for Volatile Uncorr. ECC"))
        elif _INT.fullmatch(ecc_word):
            uncorrectable = int(ecc_word)
            if uncorrectable > 0:
                findings.append((Health.ALARM, f"{_errors(uncorrectable)} since the driver loaded"))
        temperature = used = total = power = utilisation = None
        if len(record) > 1:
            second = record[1][2]
            t = re.search(r"(?<!\S)([0-9]{1,4})\s*C(?!\S)", second[0])
            temperature = float(t.group(1)) if t else None
            w = re.search(r"(?<!\S)([0-9]{1,5}(?:\.[0-9]{1,3})?)\s*W\s*/", second[0])
            power = float(w.group(1)) if w else None
            if len(second) > 1:
                mem = re.search(r"([0-9]{1,12})\s*MiB\s*/\s*([0-9]{1,12})\s*MiB", second[1])
                if mem:
                    used, total = int(mem.group(1)), int(mem.group(2))
            if len(second) > 2:
                u = re.match(r"\s*([0-9]{1,3})\s*%", second[2])
                utilisation = float(u.group(1)) if u else None
        # ERR! elsewhere (fan, power, temperature) means a reading failed; not in a fixture.
        others = [c for _, _, cells in record for c in cells]
        err_cells = sum("ERR!" in c for c in others) - (1 if ecc_word.upper() == "ERR!" else 0)
        if err_cells > 0:
            findings.append((Health.WARNING, "nvidia-smi shows ERR! for some of this GPU's readings"))
        health, reason = _worst(findings)
        chip = ChipStatus(
            index=index,
            health=health,
            temperature_c=temperature,
            memory_used_mb=used,
            memory_total_mb=total,
            ecc_uncorrectable=uncorrectable,
            reason=reason,
            power_w=power,
            utilisation_pct=utilisation,
        )
        chips.append((chip, bus_id))
    _check_unique(_TABLE_TOOL, indexed)

    result = []
    for chip, bus_id in chips:
        notes = []
        for _, line in warnings:
            m = _PCI.search(line)
            if m and normalize_pci_bus_id(m.group(0)) == bus_id:
                notes.append(re.sub(r"^warning\s*:\s*", "", line, flags=re.IGNORECASE))
        if notes:
            findings = [(chip.health, chip.reason)] if chip.reason else []
            health, reason = _worst(findings + [(Health.WARNING, f"nvidia-smi warns: {n}") for n in notes])
            chip = msgspec.structs.replace(chip, health=health, reason=reason)
        result.append(chip)
    return result


# --- kernel log: NVRM Xid --------------------------------------------------------------

#: `XidEvent.xid` of a "GPU has fallen off the bus" message that came without an Xid line:
#: the same fault as a numbered Xid 79 (critical), told apart only by `numbered=False`.
XID_FALLEN_OFF_BUS = 79

# Meanings from NVIDIA's Xid catalog (docs.nvidia.com/deploy/xid-errors/, "Xid error
# listing" and "Analyzing Xid Errors with the Xid Catalog"). Severity is trainguard's:
#   warning  - the application (or nothing) is at fault; the chip is usable as is;
#   alarm    - a hardware fault; drain and reset the GPU at the next opportunity;
#   critical - the GPU is unusable until it is reset or the node rebooted.
XID_SEVERITY: dict[int, Health] = {
    # Graphics Engine Exception: usually the application (illegal instruction/address).
    13: Health.WARNING,
    # GPU memory page fault: usually an illegal memory access by the application.
    31: Health.WARNING,
    # GPU stopped processing: the application's channel faulted; the GPU remains usable.
    43: Health.WARNING,
    # Preemptive cleanup, due to previous errors: "informational" per NVIDIA, the cause is
    # another Xid; but it means channels were torn down, and on A100 it can appear alone
    # when Fabric Manager stopped unexpectedly, so it is not `ok`.
    45: Health.WARNING,
    # Double Bit ECC Error: uncorrectable memory error; drain and reset (with 63/64).
    48: Health.ALARM,
    # Internal micro-controller breakpoint/warning (PMU breakpoint): reset the GPU.
    61: Health.ALARM,
    # Internal micro-controller halt (PMU halt): the GPU stops working until reset.
    62: Health.CRITICAL,
    # ECC page retirement or row remapping recording event: reset when convenient.
    63: Health.WARNING,
    # ECC page retirement or row remapper recording failure: reset immediately.
    64: Health.ALARM,
    # NVLINK Error: link fault; collectives over it fail or hang.
    74: Health.ALARM,
    # GPU has fallen off the bus: the GPU is gone from PCIe.
    79: Health.CRITICAL,
    # High single-bit ECC error rate: corrected, but the memory is degrading.
    92: Health.WARNING,
    # Contained ECC error: the faulting application must restart; reset for row remapping.
    94: Health.ALARM,
    # Uncontained ECC error: reset the GPU (MIG) or reboot the node now.
    95: Health.CRITICAL,
    # Context Switch Timeout Error: the application, driver or hardware; restart the app.
    109: Health.WARNING,
    # GSP RPC Timeout: the GPU's firmware stopped answering; it needs a reset.
    119: Health.CRITICAL,
}


def xid_health(xid: int) -> Health:
    """The health an Xid implies: XID_SEVERITY, fallen-off-the-bus → critical, and
    warning for a code not in the table (known to be an error, not known to be fatal)."""
    if xid == XID_FALLEN_OFF_BUS:
        return Health.CRITICAL
    return XID_SEVERITY.get(xid, Health.WARNING)


@dataclass(frozen=True)
class XidEvent:
    """One NVRM Xid (or un-numbered fallen-off-the-bus) message from the kernel log.

    `pci_bus_id` is normalised (`00000000:3B:00.0`); it is None only for a fallen-off
    message naming no device. `message` is the text after `pid=` / `name=`; for a
    fallen-off message it is the whole (continuation-joined) NVRM text. `line` is the
    1-based line it starts on; `timestamp` the first time stamp on that line as printed
    (syslog date, ISO time, or the kernel's `[...]`), without brackets."""

    pci_bus_id: str | None
    xid: int
    pid: int | None
    process: str | None
    message: str
    line: int
    timestamp: str | None
    #: False for a fallen-off-the-bus message that came without its Xid line (xid 79).
    numbered: bool = True

    @property
    def health(self) -> Health:
        return xid_health(self.xid)


_XID = re.compile(
    # `PCI:` is absent in older drivers (`NVRM: Xid (0000:03:00): 14, ...` in NVIDIA's doc);
    # MIG adds ` GPU-I:05` inside the parentheses, which is dropped.
    r"Xid\s*\(\s*(?:PCI:)?(?P<bus>[0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?)[^)]*\)"
    r"\s*:\s*(?P<xid>[0-9]{1,9})\b\s*,?\s*(?P<rest>.*)$"
)
_TIMESTAMP = re.compile(
    r"^\s*(?:\[\s*(?P<kernel>[^\]]*?)\s*\]"
    r"|(?P<syslog>[A-Z][a-z]{2}\s+[0-9]{1,2}\s+[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"|(?P<iso>[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}\S*))"
)
_DMESG_FAILURE = re.compile(r"^(?:dmesg|journalctl|sudo)\s*:|command not found|read kernel buffer failed", re.I)


def _nvrm_messages(text: str) -> Iterator[tuple[int, str | None, str]]:
    """(line, timestamp, text after `NVRM:`) per message; indented lines that carry only
    `NVRM: ...` (no timestamp) continue the previous message, as dmesg prints them."""
    pending: tuple[int, str | None, list[str]] | None = None
    for line_no, line in _lines(text):
        at = line.find("NVRM:")
        if at < 0:
            if pending:
                yield pending[0], pending[1], " ".join(pending[2])
                pending = None
            continue
        prefix, body = line[:at], line[at + len("NVRM:") :].strip()
        # A continuation is indented, has no time stamp, and does not start a new Xid.
        if pending and not prefix.strip() and line[:1].isspace() and not body.startswith("Xid"):
            pending[2].append(body)
            continue
        if pending:
            yield pending[0], pending[1], " ".join(pending[2])
        m = _TIMESTAMP.match(prefix)
        stamp = next((g for g in m.groups() if g is not None), None) if m else None
        pending = (line_no, stamp, [body])
    if pending:
        yield pending[0], pending[1], " ".join(pending[2])


def parse_dmesg_xid(text: str) -> list[XidEvent]:
    """NVRM Xid events in kernel-log text (`dmesg`, `dmesg -T`, syslog, `journalctl -k`),
    in order. Empty text or a log without Xids is valid: it returns [].

    "Fallen off the bus" messages without an Xid line are the same fault as Xid 79: events
    with `xid=XID_FALLEN_OFF_BUS` (79) and `numbered=False`, unless a numbered Xid 79 for
    the same GPU is in the same text (the driver prints both for one event; the Xid line
    is kept)."""
    lines = _nonblank(text)
    if lines and "NVRM" not in lines[0][1] and _DMESG_FAILURE.search(lines[0][1]):
        raise ParseError("dmesg", "could not read the kernel log", line_no=lines[0][0], line=lines[0][1])
    events: list[XidEvent] = []
    for line_no, stamp, body in _nvrm_messages(text):
        m = _XID.search(body)
        if m:
            rest = m.group("rest")
            pid = process = None
            pm = re.match(r"pid\s*=\s*'?(<unknown>|[0-9]{1,10})'?\s*,?\s*", rest)
            if pm:
                pid = None if pm.group(1) == "<unknown>" else int(pm.group(1))
                rest = rest[pm.end() :]
                nm = re.match(r"name\s*=\s*([^,]*?)\s*,\s*", rest)
                if nm:
                    process = None if nm.group(1) in ("<unknown>", "") else nm.group(1)
                    rest = rest[nm.end() :]
            events.append(
                XidEvent(
                    pci_bus_id=normalize_pci_bus_id(m.group("bus")),
                    xid=int(m.group("xid")),
                    pid=pid,
                    process=process,
                    message=rest.strip(),
                    line=line_no,
                    timestamp=stamp,
                )
            )
        elif re.search(r"fallen\s+off\s+the\s+bus", body, re.IGNORECASE):
            bus = _PCI.search(body)
            events.append(
                XidEvent(
                    pci_bus_id=normalize_pci_bus_id(bus.group(0)) if bus else None,
                    xid=XID_FALLEN_OFF_BUS,
                    pid=None,
                    process=None,
                    message=body,
                    line=line_no,
                    timestamp=stamp,
                    numbered=False,
                )
            )
    numbered = {e.pci_bus_id for e in events if e.xid == 79 and e.numbered}
    return [e for e in events if e.numbered or e.pci_bus_id not in numbered]
