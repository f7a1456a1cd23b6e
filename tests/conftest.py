"""Shared fixtures: the repository's search spaces."""

from pathlib import Path

import pytest

from supernet import SearchSpace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_space() -> SearchSpace:
    return SearchSpace.from_yaml(ROOT / "configs/spaces/tiny.yaml")


@pytest.fixture(scope="session")
def fmnist_space() -> SearchSpace:
    return SearchSpace.from_yaml(ROOT / "configs/spaces/fmnist.yaml")
