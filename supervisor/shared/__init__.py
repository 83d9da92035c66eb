"""The layer the daemon, the agents and the CLI share, and all that `agents` may import:
the vocabulary (vocab), the wire protocol, time (clock, durations), the strict YAML
checker, key files, sd_notify, logging setup and the settings table. It imports nothing
else of trainguard's."""

__version__ = "0.1.0"
