"""Shared fixtures of the Python package's tests."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def aggregator_bin():
    """The `fedtune-aggregator` binary of this tree (FEDTUNE_AGGREGATOR, or built here)."""
    given = os.environ.get("FEDTUNE_AGGREGATOR")
    if given:
        return given
    built = ROOT / "target" / "debug" / "fedtune-aggregator"
    if not built.exists():
        subprocess.run(["cargo", "build", "-p", "fedtune-aggregator"], cwd=ROOT, check=True)
    return str(built)
