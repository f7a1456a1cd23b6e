"""Shared fixtures: the tiny space and an analytic table for it (deterministic, instant)."""

from __future__ import annotations

from pathlib import Path

import pytest

from costmodels import CostTable, build_analytic_table
from supernet import SearchSpace

SPACES = Path(__file__).resolve().parents[2] / "configs" / "spaces"
TINY = SPACES / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny(tiny_space: SearchSpace) -> SearchSpace:
    """The repository's tiny space (tests/conftest.py), under a short name."""
    return tiny_space


@pytest.fixture(scope="session")
def tiny_table(tiny: SearchSpace) -> CostTable:
    return build_analytic_table(tiny, "edgetpu", space_file=str(TINY))
