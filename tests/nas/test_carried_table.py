"""A search checkpoint carries its cost table: export, family and sweeps never re-read the file."""

import shutil

import pytest
import pytorch_lightning as L
import torch

from costmodels import CostTable, build_analytic_table, table_cost
from nas.data.splits import SyntheticDataModule
from nas.family.chain import family_from_search
from nas.search import SupernetSearch, load_search
from nas.sweeps.run import from_checkpoint
from supernet import ArchConfig
from tests.conftest import TINY


@pytest.fixture(scope="module")
def searched(tiny_space, tmp_path_factory):
    """(checkpoint, the table file it was searched with, that table's id)."""
    d = tmp_path_factory.mktemp("carried")
    table = build_analytic_table(tiny_space, "edgetpu", space_file=TINY)
    path = table.save(d / "table.json")
    module = SupernetSearch(space=TINY, cost_table=str(path), warmup_epochs=0,
                            sandwich_random=1)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                        accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=d)
    trainer.fit(module, SyntheticDataModule(num_samples=256, batch_size=32))
    trainer.save_checkpoint(d / "search.ckpt")
    return d / "search.ckpt", path, table.id


def test_the_table_survives_deleting_its_file(searched, tmp_path, tiny_space):
    ckpt, path, table_id = searched
    copy = shutil.copy(ckpt, tmp_path / "search.ckpt")
    moved = shutil.move(path, tmp_path / "gone.json")
    try:
        search = load_search(copy)
        assert search.table.id == table_id and search.hparams.cost_table == str(path)
        family = family_from_search(search, members=3)
        table = CostTable.load(moved)  # the same numbers the file held
        for member in family.members:
            assert member.costs["latency_ms"] == pytest.approx(
                table_cost(tiny_space, table, member.config))
        summary = from_checkpoint(copy)
        assert summary["costs"]["latency_ms"] == pytest.approx(
            table_cost(tiny_space, table, ArchConfig.from_dict(summary["arch"])))
    finally:
        shutil.move(moved, path)


def test_a_different_explicit_table_names_both_ids(searched, tmp_path, tiny_space):
    ckpt, _, table_id = searched
    other = build_analytic_table(tiny_space, "mcu", space_file=TINY)
    other_path = other.save(tmp_path / "mcu.json")
    with pytest.raises(ValueError) as err:
        load_search(ckpt, cost_table=str(other_path))
    assert table_id in str(err.value) and other.id in str(err.value)
    assert "\n" not in str(err.value)


def test_an_old_checkpoint_without_a_table_loads_with_a_message(searched, tmp_path):
    ckpt, path, table_id = searched
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    del data["hwnas"]["cost_table"]
    old = tmp_path / "old.ckpt"
    torch.save(data, old)
    with pytest.warns(UserWarning, match="carries no cost table"):
        assert load_search(old).table.id == table_id  # read from its file, which still matches
    data["hyper_parameters"]["cost_table"] = str(tmp_path / "missing.json")
    torch.save(data, old)
    with pytest.raises(FileNotFoundError, match=f"carries no cost table.*{table_id}"):
        load_search(old)
