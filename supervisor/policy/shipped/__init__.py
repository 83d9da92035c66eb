"""The policies trainguard ships (default.yaml, patient-ascend.yaml), as package data so
that an installed trainguard has them wherever it runs."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped_policy_dir() -> Path:
    """The directory holding the shipped policy files."""
    return Path(str(files(__name__)))
