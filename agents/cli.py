"""`trainguard agent`: joins the `trainguard` command group via an entry point."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import click

from supervisor.shared.protocol import NODE_ID_PATTERN
from supervisor.shared.settings import option
from supervisor.shared.vocab import Accelerator


@click.command()
@option("agent", "daemon")
@option("agent", "node_id", default=lambda: socket.gethostname().split(".")[0], show_default="short hostname")
@option("agent", "accelerator", required=True)
@option("agent", "address")
@option("agent", "chips")
@option("agent", "work_dir")
@option("agent", "probe_interval")
@option("agent", "hang_timeout")
@option("agent", "keys_dir")
@click.option("--insecure", is_flag=True, help="Connect without CurveZMQ (test clusters and the demo only).")
def agent(daemon: str, node_id: str, accelerator: str, address: str | None, chips: int, work_dir: Path,
          probe_interval: float, hang_timeout: float, keys_dir: Path, insecure: bool) -> None:
    """Run this node's agent: registers with the daemon, heartbeats, probes chips."""
    import re

    from agents.agent import Agent, AgentConfig, AgentError

    if not re.match(NODE_ID_PATTERN, node_id):
        raise click.BadParameter(
            f"{node_id!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63",
            param_hint="--node-id",
        )
    interval, hang = probe_interval, hang_timeout
    if interval <= 0:
        raise click.BadParameter("must be above zero", param_hint="--probe-interval")
    config = AgentConfig(
        daemon=daemon,
        node_id=node_id,
        accelerator=Accelerator(accelerator),
        chips=chips if accelerator != "cpu" else 0,
        work_dir=work_dir,
        probe_interval=interval,
        hang_timeout=hang,
        keys_dir=None if insecure else keys_dir,
        address=address or socket.gethostname(),
    )
    try:
        Agent(config).run()
    except AgentError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.argument("source", type=click.File("r", errors="replace"), default="-")
@click.option("--patterns", envvar="TRAINGUARD_PATTERNS", show_envvar=True, type=click.Path(exists=True, dir_okay=False),
              default=None, help="Pattern catalog (default: the shipped agents/watchers/faults.yaml).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finding.")
def logscan(source: "click.utils.LazyFile", patterns: str | None, as_json: bool) -> None:
    """Classify a rank's log (FILE or - for stdin) the way the live agent does: one
    finding per matching line or per Python traceback."""
    import json

    from agents.watchers.logscan import CatalogError, LogScanner, load_catalog

    try:
        catalog = load_catalog(patterns)
    except (CatalogError, OSError) as exc:
        raise click.ClickException(f"cannot load the pattern catalog: {exc}") from exc
    scanner = LogScanner(catalog)
    if getattr(source, "name", None) == "<stdin>" and sys.stdin.isatty():
        click.echo("reading a rank's log from standard input (end with Ctrl-D); give a FILE to read one", err=True)
    findings = []
    for raw in source:
        findings.extend(scanner.feed(raw.rstrip("\n")))
    findings.extend(scanner.flush())
    # A traceback is reported when it ends; print in the order the log has them.
    for finding in sorted(findings, key=lambda f: f.line):
        _print_finding(finding, as_json, json)
    if not as_json:
        click.echo(f"{len(findings)} finding(s)", err=True)


def _print_finding(finding: object, as_json: bool, json: object) -> None:
    record = {
        "line": finding.line,  # type: ignore[attr-defined]
        "signal": finding.signal.value,  # type: ignore[attr-defined]
        "pattern": finding.pattern,  # type: ignore[attr-defined]
        "severity": finding.severity.value,  # type: ignore[attr-defined]
        "evidence": finding.evidence,  # type: ignore[attr-defined]
    }
    if as_json:
        click.echo(json.dumps(record))  # type: ignore[attr-defined]
    else:
        first = record["evidence"].splitlines()[-1] if record["evidence"] else ""
        click.echo(f"{record['line']:>6}  {record['signal']:<21} {record['pattern']:<40} {first[:160]}")


_PARSE_FORMATS = ("npu-smi", "npu-smi-health", "npu-smi-ecc", "npu-smi-common", "hccn-link",
                  "nvidia-smi", "nvidia-smi-q", "nvidia-smi-csv", "dmesg")


@click.command()
@click.option("--format", "fmt", type=click.Choice(_PARSE_FORMATS), required=True, help="Which tool printed the input.")
@click.argument("source", type=click.File("r", errors="replace"), default="-")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def parse(fmt: str, source: "click.utils.LazyFile", as_json: bool) -> None:
    """Read a saved tool output (FILE or - for stdin) with the agent's own parsers and
    print the chips (or Xid events) it found: what the live agent would have seen."""
    import dataclasses
    import json

    import msgspec

    from agents.probes import parsers as p

    text = source.read()
    readers = {
        "npu-smi": p.parse_npu_smi_info, "npu-smi-health": p.parse_npu_smi_health, "npu-smi-ecc": p.parse_npu_smi_ecc,
        "npu-smi-common": p.parse_npu_smi_common, "hccn-link": p.parse_hccn_link, "nvidia-smi": p.parse_nvidia_smi_table,
        "nvidia-smi-q": p.parse_nvidia_smi_q, "nvidia-smi-csv": p.parse_nvidia_smi_csv, "dmesg": p.parse_dmesg_xid,
    }
    try:
        result = readers[fmt](text)
    except p.ParseError as exc:
        raise click.ClickException(f"{getattr(source, 'name', '-')}: {exc}") from exc

    def plain(value: object) -> object:
        if dataclasses.is_dataclass(value):
            return {k: plain(v) for k, v in dataclasses.asdict(value).items()}  # type: ignore[arg-type]
        return msgspec.to_builtins(value)

    data = plain(result) if not isinstance(result, list) else [plain(r) for r in result]
    if as_json or not isinstance(data, list):
        click.echo(json.dumps(data, indent=2, default=str))
        return
    for row in data:
        if fmt == "dmesg":
            click.echo(f"line {row['line']:>5}  Xid {row['xid']:<4} {row['pci_bus_id'] or '-':<18} {row['message'][:120]}")
        else:
            extra = f"  {row['temperature_c']}°C" if row.get("temperature_c") is not None else ""
            memory = f"  {row['memory_used_mb']}/{row['memory_total_mb']} MB" if row.get("memory_total_mb") else ""
            ecc = f"  ECC uncorrectable {row['ecc_uncorrectable']}" if row.get("ecc_uncorrectable") else ""
            reason = f"  ({row['reason']})" if row.get("reason") else ""
            power = f"  {row['power_w']:g} W" if row.get("power_w") is not None else ""
            util = f"  use {row['utilisation_pct']:g}%" if row.get("utilisation_pct") is not None else ""
            ddr = (f"  DDR {row['ddr_used_mb']}/{row['ddr_total_mb']} MB"
                   if row.get("ddr_total_mb") and row.get("hbm_total_mb") else "")  # both kinds: show the other too
            click.echo(f"chip {row['index']:>3}  {row['health']:<8}{extra}{power}{util}{memory}{ddr}{ecc}{reason}")
