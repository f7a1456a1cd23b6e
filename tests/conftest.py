"""Shared fixtures: the repository's search spaces and an analytic table for the tiny one."""

from pathlib import Path

import pytest

from supernet import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/spaces/tiny.yaml")


@pytest.fixture(scope="session")
def tiny_space() -> SearchSpace:
    return SearchSpace.from_yaml(TINY)


@pytest.fixture(scope="session")
def fmnist_space() -> SearchSpace:
    return SearchSpace.from_yaml(ROOT / "configs/spaces/fmnist.yaml")


@pytest.fixture(scope="session")
def tiny_table(tiny_space, tmp_path_factory) -> str:
    """Path of an Edge-TPU roofline table for the tiny space (deterministic, instant)."""
    from costmodels import build_analytic_table

    path = tmp_path_factory.mktemp("tables") / "tiny_edgetpu.json"
    build_analytic_table(tiny_space, "edgetpu", space_file=TINY).save(path)
    return str(path)
