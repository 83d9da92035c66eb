"""trainguard's central daemon, CLI and everything cluster-wide."""

__version__ = "0.1.0"
