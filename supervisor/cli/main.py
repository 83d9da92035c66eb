"""`trainguard ...`: every command line entry point. Thin: parse, call, print.

Each option also reads a TRAINGUARD_* environment variable (shown in --help). Commands
that run on nodes (`trainguard agent`) live in the `agents` package and join this group
through the `trainguard.commands` entry point, so the daemon side never imports them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from supervisor.shared import __version__
from supervisor.shared.protocol import MAX_CHIPS
from supervisor.shared.settings import DURATION, SETTINGS, option
from supervisor.shared.vocab import Fault

ctl_option = option("cli", "ctl")
timeout_option = click.option(
    "--timeout",
    type=DURATION,
    default="5s",
    show_default=True,
    help="How long to wait for the daemon's answer.",
)


def _log_option(key: str) -> dict[str, Any]:
    setting = SETTINGS["log"][key]
    return {"type": setting.type, "default": setting.default, "envvar": setting.env, "show_envvar": True,
            "show_default": True, "help": setting.help}


class _Group(click.Group):
    """Adds the commands other trainguard packages register (entry point group
    `trainguard.commands`), on first use."""

    _plugins_loaded = False

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        import importlib.metadata

        for ep in importlib.metadata.entry_points(group="trainguard.commands"):
            if ep.name not in self.commands:
                self.add_command(_LazyCommand(ep), ep.name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        # A command of this module is found without reading the installed packages'
        # entry points (importlib.metadata: ~20 ms of every `trainguard status`).
        command = super().get_command(ctx, name)
        if command is None:
            self._load_plugins()
            command = super().get_command(ctx, name)
        if isinstance(command, _LazyCommand):
            command = command.resolve()
            self.commands[name] = command
        return command


class _LazyCommand(click.Command):
    """A placeholder for a plugin command, imported only when it is run or helped."""

    def __init__(self, ep: Any) -> None:  # an importlib.metadata.EntryPoint
        super().__init__(ep.name, help=f"(from {ep.value})")
        self.ep = ep

    def resolve(self) -> click.Command:
        try:
            return self.ep.load()
        except Exception as exc:
            raise click.ClickException(
                f"the {self.ep.name!r} command ({self.ep.value}) cannot be loaded: {exc!r}; "
                "reinstall trainguard"
            ) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trainguard")
@click.option("--log-format", **_log_option("format"))
@click.option("--log-level", **_log_option("level"))
@click.option(
    "--config",
    "config_path",
    envvar="TRAINGUARD_CONFIG",
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration file [default: /etc/trainguard/trainguard.toml, if it exists]. "
    "Precedence: defaults < this file < TRAINGUARD_* variables < flags.",
)
@click.pass_context
def main(ctx: click.Context, log_format: str, log_level: str, config_path: Path | None) -> None:
    """trainguard: keeps PyTorch training alive on Ascend and Nvidia clusters.

    A daemon per cluster (`trainguard daemon`), an agent per node (`trainguard agent`),
    and commands to look at and poke the cluster (`status`, `inject`). `trainguard demo`
    runs a small cluster on this machine.
    """
    from click.core import ParameterSource

    from supervisor.cli import config as tg_config

    try:
        cfg = tg_config.load(config_path or tg_config.DEFAULT_PATH, explicit=config_path is not None)
    except tg_config.ConfigError as exc:
        raise click.ClickException(f"invalid configuration, refusing to start:\n{exc}") from exc
    ctx.obj = cfg
    ctx.default_map = {**cfg.default_map(), **(ctx.default_map or {})}
    # The group's own options were parsed before the file was read: apply it by hand,
    # below env vars and flags as everywhere else.
    if ctx.get_parameter_source("log_format") is ParameterSource.DEFAULT:
        log_format = cfg.values.get(("log", "format"), log_format)
    if ctx.get_parameter_source("log_level") is ParameterSource.DEFAULT:
        log_level = cfg.values.get(("log", "level"), log_level)
    if ctx.invoked_subcommand not in _CLIENT_COMMANDS:
        from supervisor.shared import logging as tg_logging

        tg_logging.configure(log_format, log_level)


#: Commands of this module that ask the daemon or read files and write their answer:
#: none of them logs, so they are spared structlog's import (~60 ms of every `trainguard
#: status`, most of it rich). Anything else (the daemon, the demo, the agent and other
#: plugin commands) gets its logging configured.
_CLIENT_COMMANDS = frozenset({"status", "inject", "node", "job", "events", "policy", "config", "keys"})


@main.command()
@option("daemon", "bind")
@option("daemon", "ctl")
@option("daemon", "state_dir")
@option("daemon", "policy_dir")
@option("daemon", "heartbeat_timeout")
@option("daemon", "heartbeat_interval")
@option("daemon", "metrics_bind")
@option("daemon", "keys_dir")
@click.option("--insecure", is_flag=True, help="No authentication at all (test clusters and the demo only).")
def daemon(
    bind: str,
    ctl: str,
    state_dir: Path,
    policy_dir: Path | None,
    heartbeat_timeout: float,
    heartbeat_interval: float,
    metrics_bind: str,
    keys_dir: Path,
    insecure: bool,
) -> None:
    """Run the cluster's supervisor daemon (in the foreground; systemd runs it as a service)."""
    from supervisor.daemon.loop import Daemon, DaemonConfig, DaemonError

    if heartbeat_interval <= 0 or heartbeat_interval >= heartbeat_timeout:
        raise click.BadParameter(
            f"must be above 0 and below --heartbeat-timeout ({heartbeat_timeout:g}s), got {heartbeat_interval:g}s",
            param_hint="--heartbeat-interval",
        )
    metrics = None
    if metrics_bind != "off":
        host, _, port = metrics_bind.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(f"{metrics_bind!r}: expected HOST:PORT (such as 0.0.0.0:9755) or off",
                                     param_hint="--metrics-bind")
        metrics = (host.strip("[]"), int(port))
    config = DaemonConfig(
        keys_dir=keys_dir,
        insecure=insecure,
        metrics=metrics,
        bind=bind,
        ctl=ctl,
        state_dir=state_dir,
        policy_dir=policy_dir,
        heartbeat_timeout=heartbeat_timeout,
        heartbeat_interval=heartbeat_interval,
    )
    try:
        Daemon(config).run()
    except DaemonError as exc:
        raise click.ClickException(str(exc)) from exc


def pretty_json(value: Any) -> str:
    """`json.dumps(value, indent=2, sort_keys=True)`, the same text, in about a tenth of
    the time (`supervisor.cli.jsontext`)."""
    from supervisor.cli import jsontext

    return jsontext.dumps(value).decode()


@main.command()
@ctl_option
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON form (see README.md).")
@click.option("--all", "show_all", is_flag=True, help="Also nodes lost or left more than an hour ago.")
def status(ctl: str, timeout: float, as_json: bool, show_all: bool) -> None:
    """Show the cluster: nodes, their state and health, chips, heartbeat age; jobs."""
    from supervisor.cli.client import ClientError, status_document, status_pages

    try:
        document = status_document(*status_pages(ctl, timeout=timeout, include_gone=show_all))
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        from supervisor.cli import jsontext

        # The bytes as they are: 23 MB for 5,000 nodes, which click.echo would decode
        # and encode again.
        out = click.get_binary_stream("stdout")
        out.write(jsontext.dumps(document))
        out.write(b"\n")
        out.flush()
    else:
        import msgspec

        from supervisor.cli.render import print_status

        print_status(msgspec.to_builtins(document))


_FAULT_HELP = {
    "ok": "healthy again (error codes and ECC counts cleared; a hang lets go)",
    "warning": "the chip reports health warning",
    "alarm": "the chip reports health alarm",
    "critical": "the chip reports health critical",
    "ecc": "add --count uncorrectable ECC errors (health at least alarm)",
    "chip_error": "critical with a vendor-style error code; the rank on it fails with the vendor's device error",
    "chip_degraded": "warning with a vendor-style error code (signal chip_degraded)",
    "crash": "the agent SIGKILLs the training rank on the chip",
    "hang": "the training rank on the chip stops stepping, as one stuck in a collective would",
    "interconnect_timeout": "the rank on the chip prints the vendor's timeout (HCCL EI0002 / NCCL watchdog) and fails",
}
assert set(_FAULT_HELP) == {f.value for f in Fault}, "every fault has its line of help"


@main.command(help="Inject FAULT into a simulated NODE's chip, through the daemon; the agent acts it out where "
              "the real fault would show, and detection runs as in production.\n\n\b\n"
              + "\n".join(f"{name:<21} {text}" for name, text in _FAULT_HELP.items()))
@ctl_option
@timeout_option
@click.argument("node")
@click.argument("fault", type=click.Choice([f.value for f in Fault]))
@click.option("--chip", type=click.IntRange(min=0, max=MAX_CHIPS - 1), default=0, show_default=True,
              help="Which chip of the node.")
@click.option("--count", type=click.IntRange(min=1, max=1_000_000), default=1, show_default=True,
              help="ECC errors to add (fault ecc).")
def inject(ctl: str, timeout: float, node: str, fault: str, chip: int, count: int) -> None:
    from supervisor.cli.client import ClientError, request

    try:
        result = request(ctl, "inject", {"node": node, "fault": fault, "chip": chip, "count": count}, timeout=timeout)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    if Fault(fault).needs_rank or fault in ("hang", "interconnect_timeout"):
        click.echo(f"injected {fault} into {node} chip {chip}; the rank on it acts it out now")
    else:
        click.echo(f"injected {fault} into {node} chip {chip}; its probe reports it within "
                   f"{result.get('probe_interval_s', '?')}s (watch `trainguard status`)")


@main.group()
def node() -> None:
    """Manage nodes the daemon knows."""


@node.command("forget")
@ctl_option
@timeout_option
@click.argument("name", metavar="NODE")
def node_forget(ctl: str, timeout: float, name: str) -> None:
    """Remove NODE (lost, left or pending) from the daemon's table and state: for
    decommissioned machines. A node that registers again is simply new."""
    from supervisor.cli.client import ClientError, request

    try:
        result = request(ctl, "node_forget", {"node": name}, timeout=timeout)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"forgot {name} (it was {result['was']})")


def _ask(ctl: str, verb: str, args: dict[str, Any], timeout: float, as_json: bool = False) -> Any:
    """One control request; a refusal or no answer is exit 1 (JSON on stdout with --json)."""
    from supervisor.cli.client import ClientError, request

    try:
        return request(ctl, verb, args, timeout=timeout)
    except ClientError as exc:
        if as_json:
            click.echo(json.dumps({"error": str(exc), "code": exc.code}, indent=2, sort_keys=True))
            sys.exit(1)
        raise click.ClickException(str(exc)) from exc


@node.command("drain")
@ctl_option
@timeout_option
@click.argument("name", metavar="NODE")
@click.option("--reason", default="drained by an operator", show_default=True, help="Shown in status and events.")
def node_drain(ctl: str, timeout: float, name: str, reason: str) -> None:
    """NODE takes no new ranks; a job running on it is moved off it by a restart."""
    _ask(ctl, "node_drain", {"node": name, "reason": reason}, timeout)
    click.echo(f"drained {name}: {reason}")


@node.command("undrain")
@ctl_option
@timeout_option
@click.argument("name", metavar="NODE")
def node_undrain(ctl: str, timeout: float, name: str) -> None:
    """NODE (and any chip a policy excluded on it) takes ranks again."""
    _ask(ctl, "node_undrain", {"node": name}, timeout)
    click.echo(f"undrained {name}")


@main.group()
def job() -> None:
    """Run training as jobs: submitted to the daemon, carried through faults (README: Jobs)."""


@job.command("submit")
@ctl_option
@timeout_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help='Print {"job": ID}.')
def job_submit(ctl: str, timeout: float, file: Path, as_json: bool) -> None:
    """Submit the job FILE (YAML; unknown keys are errors). Relative `workdir` and
    `checkpoint_dir` are resolved here, against this directory and the workdir."""
    import msgspec

    from supervisor.cli.jobfile import JobFileError, read_job_file

    try:
        spec = read_job_file(file)
    except JobFileError as exc:
        if as_json:
            click.echo(json.dumps({"error": str(exc), "code": "bad_job_file"}))
            sys.exit(1)
        raise click.ClickException(f"{file} is not a valid job file:\n{exc}") from exc
    result = _ask(ctl, "job_submit", {"spec": msgspec.to_builtins(spec)}, timeout, as_json)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(result["job"])


@job.command("list")
@ctl_option
@timeout_option
@click.option("--json", "as_json", is_flag=True)
def job_list(ctl: str, timeout: float, as_json: bool) -> None:
    """Every job the daemon knows: state, pool, step, restarts, failovers."""
    result = _ask(ctl, "job_list", {}, timeout, as_json)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    from supervisor.cli.render import print_jobs

    print_jobs(result["jobs"])


@job.command("show")
@ctl_option
@timeout_option
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The stable form (README: job show --json).")
def job_show(ctl: str, timeout: float, job_id: str, as_json: bool) -> None:
    """One job: its state, pool, nodes, progress, restarts, failovers and the policy's decisions."""
    result = _ask(ctl, "job_show", {"job": job_id}, timeout, as_json)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    from supervisor.cli.render import print_job

    print_job(result)


@job.command("stop")
@ctl_option
@timeout_option
@click.argument("job_id", metavar="ID")
@click.option("--grace", type=DURATION, default="60s", show_default=True,
              help="Time for the final checkpoint before SIGKILL.")
def job_stop(ctl: str, timeout: float, job_id: str, grace: float) -> None:
    """Stop a job: its ranks agree on a final checkpoint, then it ends `stopped`."""
    result = _ask(ctl, "job_stop", {"job": job_id, "grace": grace}, timeout)
    click.echo(f"stopping {result['job']} (final checkpoint, SIGKILL after {grace:g}s)")


@job.command("failover")
@ctl_option
@timeout_option
@click.argument("job_id", metavar="ID")
@click.option("--to", "to_pool", required=True, help="The pool to move to.")
def job_failover(ctl: str, timeout: float, job_id: str, to_pool: str) -> None:
    """Move a job to another pool now, as a policy's failover would (checkpoint first)."""
    result = _ask(ctl, "job_failover", {"job": job_id, "to": to_pool}, timeout)
    click.echo(f"failing {result['job']} over to {to_pool}")


@job.command("report")
@ctl_option
@timeout_option
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the job's timeline as a PNG (needs matplotlib).")
@click.option("--metrics", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The trainer's per-step metrics file (JSON lines with step, loss, time) for the plot's loss curve.")
def job_report(ctl: str, timeout: float, job_id: str, as_json: bool, plot: Path | None, metrics: Path | None) -> None:
    """What happened to a job and what it cost: ETTR, time lost by root cause, detection
    and recovery per incident, steps redone, restarts and failovers."""
    from supervisor.core.report import job_report as build

    job = _ask(ctl, "job_show", {"job": job_id}, timeout, as_json)
    events = _ask(ctl, "events", {"job": job["id"], "limit": 5000}, timeout, as_json)["events"]
    report = build(job, events, time.time())
    if plot is not None:
        from supervisor.cli.timeline import PlotUnavailable, plot_timeline

        try:
            plot_timeline(job, events, metrics, plot)
        except PlotUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    from supervisor.cli.render import print_report

    print_report(report)


@main.command()
@ctl_option
@timeout_option
@click.option("--job", "job_id", default=None, help="Only this job's events.")
@click.option("--node", default=None, help="Only this node's events.")
@click.option("--since", type=DURATION, default=None, help="Only events of the last DURATION (10m, 2h).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events (Ctrl-C to stop).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event, as in the daemon's log.")
def events(ctl: str, timeout: float, job_id: str | None, node: str | None, since: float | None, follow: bool,
           as_json: bool) -> None:
    """The daemon's events from its store: the same names and fields as its log."""
    from supervisor.cli.render import event_line

    args: dict[str, Any] = {"job": job_id, "node": node}
    if since is not None:
        args["since"] = time.time() - since
    last = None
    while True:
        query = {k: v for k, v in args.items() if v is not None}
        if last is not None:
            query["after"] = last
        for event in _ask(ctl, "events", query, timeout)["events"]:
            last = event["seq"]
            click.echo(json.dumps(event, sort_keys=True) if as_json else event_line(event))
        if not follow:
            return
        if last is None:
            last = 0
        time.sleep(0.5)


@main.command()
@click.option("--dir", "work_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the demo's state, logs and metrics here (default: a temporary directory, removed).")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the summary (faults, detection and recovery times, failover, ETTR, loss check) as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw the job's timeline as a PNG (needs matplotlib: pip install 'trainguard[plot]').")
def demo(work_dir: Path | None, summary_json: Path | None, plot: Path | None) -> None:
    """Run a small cluster on this machine: a job survives injected faults and fails over
    from Ascend to Nvidia by policy (about two minutes)."""
    from supervisor.cli.demo import run_demo

    sys.exit(run_demo(work_dir, summary_json, plot))


@main.group()
def policy() -> None:
    """Check, replay and inspect failover policies (policies/README.md)."""


@policy.command("check")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
def policy_check(paths: tuple[Path, ...]) -> None:
    """Validate policy FILEs (or every *.yaml in a directory) as the daemon would; with
    no argument, the policies shipped with trainguard.

    Exits 0 when all are valid, 1 with every problem as `file:line: ...` otherwise:
    usable as a CI step before a policy change reaches the daemon.
    """
    from supervisor.policy.directory import is_policy_file
    from supervisor.policy.loader import PolicyError, load_file
    from supervisor.policy.shipped import shipped_policy_dir

    paths = paths or (shipped_policy_dir(),)
    files = []
    for path in paths:
        files.extend(sorted(p for p in path.iterdir() if is_policy_file(p)) if path.is_dir() else [path])
    failed = False
    names: dict[str, Path] = {}
    for path in files:
        try:
            loaded = load_file(path)
        except PolicyError as exc:
            failed = True
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            continue
        if loaded.name in names:
            failed = True
            click.echo(f"{path}:1: policy name {loaded.name!r} is also used by {names[loaded.name]}; the daemon would refuse one", err=True)
            continue
        names[loaded.name] = path
        click.echo(f"ok  {path}  (policy {loaded.name}: {len(loaded.rules)} rules, sha256 {loaded.sha256[:12]})")
    if not files:
        raise click.ClickException("no policy files (*.yaml, *.yml) found")
    sys.exit(1 if failed else 0)


@policy.command("explain")
@click.argument("policy_file", metavar="POLICY", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--events", "events_file", required=True, type=click.File("r"), help="JSON-lines event history ('-' for stdin): a daemon log or signal records.")
@click.option("--healthy", multiple=True, metavar="POOL=N", help="Assume POOL has N healthy nodes (default: enough). Repeatable.")
@click.option("--start-pool", default=None, help="The pool jobs start on (default: the policy's preferred_pool).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per decision, then a summary.")
def policy_explain(policy_file: Path, events_file: Any, healthy: tuple[str, ...], start_pool: str | None, as_json: bool) -> None:
    """Replay a recorded event history through POLICY and print each decision and why.

    Nothing touches a cluster: use it to see what a policy change would have done to
    last night's incident before deploying it.
    """
    from supervisor.policy.explain import explain
    from supervisor.policy.history import read_history
    from supervisor.policy.loader import PolicyError, load_file

    try:
        loaded = load_file(policy_file)
    except PolicyError as exc:
        raise click.ClickException(f"{policy_file} is not a valid policy:\n{exc}") from exc
    pool_health = {}
    for item in healthy:
        pool, _, count = item.partition("=")
        if pool not in loaded.pools or not count.isdigit():
            raise click.BadParameter(f"{item!r}: expected POOL=N with POOL one of {', '.join(loaded.pools)}", param_hint="--healthy")
        pool_health[pool] = int(count)
    if start_pool is not None and start_pool not in loaded.pools:
        raise click.BadParameter(f"{start_pool!r} is not a pool of {loaded.name}: {', '.join(loaded.pools)}", param_hint="--start-pool")
    history = read_history(events_file, events_file.name, loaded)
    if history.problems:
        for problem in history.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"{len(history.problems)} unreadable line(s) in {events_file.name}; nothing replayed")
    report = explain(loaded, history.events, pool_health or None, start_pool)
    if as_json:
        for decision in report.decisions:
            click.echo(json.dumps(decision.to_dict(), sort_keys=True))
        click.echo(json.dumps({"summary": report.summary(), "skipped_lines": history.skipped}, sort_keys=True))
    else:
        from supervisor.cli.render import print_explain

        print_explain(loaded, report, events_file.name, history.skipped)


@policy.command("show")
@ctl_option
@timeout_option
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Load this directory here instead of asking the daemon.")
@click.option("--json", "as_json", is_flag=True)
def policy_show(ctl: str, timeout: float, directory: Path | None, as_json: bool) -> None:
    """Show the policies the daemon has loaded (and files it refused), or those of --dir."""
    if directory is not None:
        from supervisor.policy.directory import PolicyDirectory

        loaded_dir = PolicyDirectory(directory.resolve())
        loaded_dir.load_all(time.time())
        result = loaded_dir.describe()
    else:
        from supervisor.cli.client import ClientError, request

        try:
            result = request(ctl, "policies", timeout=timeout)
        except ClientError as exc:
            if as_json:  # a script reading --json gets JSON, also for an error
                click.echo(json.dumps({"error": str(exc), "code": exc.code}, indent=2, sort_keys=True))
                sys.exit(1)
            raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        from supervisor.cli.render import print_policies

        print_policies(result)


@main.group()
def config() -> None:
    """Inspect the configuration (file, environment, defaults)."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print every setting's effective value and where it came from: an environment
    variable, the file (with its line), or the built-in default. Flags given to a
    command override all of these for that command."""
    cfg = ctx.find_root().obj
    rows = cfg.effective()
    if as_json:
        click.echo(json.dumps({"file": str(cfg.path) if cfg.path else None, "settings": rows}, indent=2))
        return
    click.echo(f"configuration file: {cfg.path or 'none (using defaults and environment)'}")
    width = max(len(r["setting"]) for r in rows)
    for r in rows:
        click.echo(f"{r['setting']:<{width}}  {str(r['value']):<32} {r['source']}")


@main.group()
def keys() -> None:
    """CurveZMQ keys for the daemon, agents and admins."""


@keys.command("generate")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="daemon, agent, admin, or a node's name for the allow-list.")
def keys_generate(directory: Path, name: str) -> None:
    """Create NAME.key (public) and NAME.key_secret (mode 0600) in DIRECTORY.

    \b
    daemon host:  trainguard keys generate /etc/trainguard/keys --name daemon
    each node:    trainguard keys generate /etc/trainguard/keys --name agent
                  copy the daemon's daemon.key to the node's keys dir, and the
                  node's agent.key to the daemon's keys/agents/NODE.key
    """
    from supervisor.shared.keys import KeyError_, generate

    try:
        public, secret = generate(directory, name)
    except KeyError_ as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {public} (public) and {secret} (secret, mode 0600)")
