"""trainguard's central side: the daemon, its pure core, policies and the CLI.

Layers, each importing only those below it (import-linter contracts in pyproject.toml):
cli → daemon → core → policy → shared. `agents` imports `supervisor.shared` only, and
nothing here imports `agents`.
"""

from supervisor.shared import __version__

__all__ = ["__version__"]
