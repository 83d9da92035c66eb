"""`trainguard agent`: joins the `trainguard` command group via an entry point."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from supervisor.durations import parse_duration
from supervisor.protocol import DEFAULT_AGENT_ENDPOINT, NODE_ID_PATTERN
from supervisor.vocab import Accelerator


@click.command()
@click.option(
    "--daemon",
    envvar="TRAINGUARD_DAEMON",
    show_envvar=True,
    default=DEFAULT_AGENT_ENDPOINT,
    show_default=True,
    help="The daemon's agent endpoint (tcp://HOST:PORT or ipc://PATH).",
)
@click.option(
    "--node-id",
    envvar="TRAINGUARD_NODE_ID",
    show_envvar=True,
    default=lambda: socket.gethostname().split(".")[0],
    show_default="short hostname",
    help="This node's name in the cluster: letters, digits, '.', '_', '-'; at most 63.",
)
@click.option(
    "--accelerator",
    envvar="TRAINGUARD_ACCELERATOR",
    show_envvar=True,
    type=click.Choice([a.value for a in Accelerator]),
    required=True,
    help="What this node trains on; sim-* train on the CPU and report simulated chips.",
)
@click.option(
    "--chips",
    envvar="TRAINGUARD_CHIPS",
    show_envvar=True,
    type=click.IntRange(min=0, max=4095),
    default=8,
    show_default=True,
    help="Number of chips (simulated ones for sim-*).",
)
@click.option(
    "--work-dir",
    envvar="TRAINGUARD_WORK_DIR",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    default="/var/lib/trainguard/agent",
    show_default=True,
    help="Where the agent keeps rank logs, checkpoints and simulated chips.",
)
@click.option(
    "--probe-interval",
    envvar="TRAINGUARD_PROBE_INTERVAL",
    show_envvar=True,
    default="5s",
    show_default=True,
    help="How often chip and host health are read.",
)
def agent(daemon: str, node_id: str, accelerator: str, chips: int, work_dir: Path, probe_interval: str) -> None:
    """Run this node's agent: registers with the daemon, heartbeats, probes chips."""
    import re

    from agents.agent import Agent, AgentConfig, AgentError

    if not re.match(NODE_ID_PATTERN, node_id):
        raise click.BadParameter(
            f"{node_id!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63",
            param_hint="--node-id",
        )
    try:
        interval = parse_duration(probe_interval)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--probe-interval") from exc
    if interval <= 0:
        raise click.BadParameter("must be above zero", param_hint="--probe-interval")
    config = AgentConfig(
        daemon=daemon,
        node_id=node_id,
        accelerator=Accelerator(accelerator),
        chips=chips if accelerator != "cpu" else 0,
        work_dir=work_dir,
        probe_interval=interval,
    )
    try:
        Agent(config).run()
    except AgentError as exc:
        raise click.ClickException(str(exc)) from exc
