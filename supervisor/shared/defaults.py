"""Defaults that more than one part of trainguard needs, said once.

The daemon, the agent, the configuration file, the CLI options and the policy model all
take their defaults from here (supervisor.shared.settings builds the options from them).
"""

from __future__ import annotations

#: Where agents find the daemon, and the CLI its control endpoint, unless told otherwise.
DEFAULT_AGENT_ENDPOINT = "tcp://127.0.0.1:7755"
DEFAULT_CTL_ENDPOINT = "tcp://127.0.0.1:7756"

#: A node silent this long is lost (daemon flag, config, and a policy's detect section).
DEFAULT_HEARTBEAT_TIMEOUT = 15.0
#: How often agents heartbeat; the daemon tells each agent when it registers.
DEFAULT_HEARTBEAT_INTERVAL = 2.0
#: How often agents read chip and host health.
DEFAULT_PROBE_INTERVAL = 5.0
#: No training step for this long is a hang (checkpoint and eval phases have their own).
DEFAULT_HANG_TIMEOUT = 300.0
DEFAULT_CHECKPOINT_HANG_TIMEOUT = 1800.0
DEFAULT_EVAL_HANG_TIMEOUT = 1800.0
#: A rank's first step may come this late (or after the train limit, if longer): starting
#: (import torch, build the model, join the process group, load a checkpoint) takes
#: seconds to minutes, which a short hang_timeout must not call a hang.
DEFAULT_STARTUP_HANG_TIMEOUT = 60.0

DEFAULT_STATE_DIR = "/var/lib/trainguard"
DEFAULT_AGENT_WORK_DIR = "/var/lib/trainguard/agent"
DEFAULT_KEYS_DIR = "/etc/trainguard/keys"
DEFAULT_CONFIG_PATH = "/etc/trainguard/trainguard.toml"
