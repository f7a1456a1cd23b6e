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


def synthetic_data():
    from nas.data.splits import SyntheticDataModule

    dm = SyntheticDataModule(num_samples=256, batch_size=32)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory):
    """A briefly trained search on the tiny space: (module, checkpoint path, its directory)."""
    from costmodels.profile import torch_threads
    from nas.quickstart import ensure_table, run_search

    d = tmp_path_factory.mktemp("search")
    table = ensure_table(TINY, d / "table.json", measured=False)
    with torch_threads(1):  # tiny tensors: one thread beats two
        search, ckpt = run_search(TINY, table, synthetic_data(), d, epochs=1,
                                  limit_train_batches=4, limit_val_batches=1, progress=False)
    return search, ckpt, d
