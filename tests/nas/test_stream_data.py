"""StreamingImageDataModule on a small local shard set written at test time (litdata)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch
from torchvision.datasets import ImageFolder

from nas.budget import BudgetSpec
from nas.data.images import Augment
from nas.data.streaming import StreamingImageDataModule, write_shards
from nas.search import SupernetSearch
from tests.conftest import TINY
from tests.nas.image_folder import write_image_folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 classes x 40 train + 5 test images as shards of ~10 images each."""
    root = tmp_path_factory.mktemp("stream")
    folder = write_image_folder(root / "images", per_class=40, classes=4, test_per_class=5)
    for split in ("train", "test"):
        write_shards(ImageFolder(str(folder / split)), root / "shards" / split,
                     chunk_bytes="8KB", start_method="fork")
    return root / "shards"


def stream(shards: Path, **kwargs) -> StreamingImageDataModule:
    kwargs.setdefault("channels", 1)
    kwargs.setdefault("num_classes", 4)
    kwargs.setdefault("batch_size", 16)
    return StreamingImageDataModule(str(shards / "train"), str(shards / "test"), **kwargs)


def source_indices(dataset) -> list[int]:
    """The source index of every item a split streams (decoding skipped)."""
    dataset.transform = lambda item: item["index"]
    return list(iter(dataset))


def test_stream_splits_are_seeded_disjoint_and_cover_the_shards(shards):
    a, b, other = stream(shards), stream(shards), stream(shards, data_seed=1)
    for dm in (a, b, other):
        dm.setup("fit")
    ids = {s: source_indices(a.datasets[s]) for s in ("train", "search", "val")}
    assert len(ids["search"]) == 32 and len(ids["val"]) == 16
    together = sorted(i for split in ids.values() for i in split)
    assert len(together) == len(set(together)) and set(together) <= set(range(160))
    assert len(together) >= 158  # litdata floors each split's item count
    assert sorted(source_indices(b.datasets["search"])) == sorted(ids["search"])
    assert sorted(source_indices(other.datasets["search"])) != sorted(ids["search"])
    assert sorted(source_indices(a.datasets["test"])) == list(range(20))


def test_stream_batches_are_shaped_and_mixed_classes(shards):
    dm = stream(shards, image_size=16, augment=Augment(scale=(0.5, 1.0)))
    dm.setup("fit")
    assert dm.input_shape == (1, 16, 16)
    images, labels = next(iter(dm.weights_dataloader()))
    assert images.shape == (16, 1, 16, 16) and labels.dtype == torch.long
    assert len(labels.unique()) > 1  # shards were written in a shuffled order
    val = [y for _, y in dm.val_dataloader()]
    assert sum(len(y) for y in val) == 16


def test_a_search_runs_on_streamed_shards(shards, tiny_table):
    L.seed_everything(0)
    search = SupernetSearch(space=TINY, cost_table=tiny_table, budget=BudgetSpec(fraction=0.3),
                            warmup_epochs=0, sandwich_random=1)
    run = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    run.fit(search, stream(shards, num_classes=None, image_size=16))
    assert run.global_step == 4 and 0.0 <= float(run.callback_metrics["val/acc"]) <= 1.0


def test_stream_bad_input(shards, tmp_path):
    with pytest.raises(ValueError, match="no shards at .*write them with"):
        StreamingImageDataModule(str(tmp_path), num_classes=4).setup()
    with pytest.raises(ValueError, match="num_classes: a stream's labels"):
        stream(shards, num_classes=None).setup()
    dm = stream(shards, num_classes=3)
    dm.setup()
    with pytest.raises(ValueError, match="label 3, outside 0..2"):
        for _ in dm.val_dataloader():
            pass


@pytest.mark.slow  # two processes start: ~40 s on 2 cores
def test_ddp_ranks_carve_the_same_stream_splits_and_read_disjoint_shares(shards, tiny_table,
                                                                          tmp_path):
    script = Path(__file__).with_name("ddp_folder_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(31500 + os.getpid() % 1000)}
    run = subprocess.run([sys.executable, str(script), "stream", str(shards), tiny_table,
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["split"] == ranks[1]["split"] and ranks[0]["steps"] == ranks[1]["steps"] > 0
    for split in ("train", "search"):
        shares = [r["seen"][split] for r in ranks]
        assert len(shares[0]) == len(shares[1]) > 0  # equal lengths: no rank waits on another
        assert not set(shares[0]) & set(shares[1])


def test_the_shard_writer_reports_a_bad_folder_in_one_line(tmp_path, capsys):
    from nas.data.streaming import main

    assert main(["--root", str(tmp_path), "--out", str(tmp_path / "shards")]) == 1
    assert capsys.readouterr().err.strip().startswith(
        "python -m nas.data.streaming: error: root: no folder")
