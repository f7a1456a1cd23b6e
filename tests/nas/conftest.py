"""Fixtures for search tests: an analytic cost table for the tiny space."""

import pytest

from costmodels import build_analytic_table
from tests.conftest import ROOT

TINY = str(ROOT / "configs/spaces/tiny.yaml")


@pytest.fixture(scope="session")
def tiny_table(tiny_space, tmp_path_factory) -> str:
    """Path of an Edge-TPU roofline table for the tiny space (deterministic, instant)."""
    path = tmp_path_factory.mktemp("tables") / "tiny_edgetpu.json"
    build_analytic_table(tiny_space, "edgetpu", space_file=TINY).save(path)
    return str(path)
