"""ImageDataModule: an image folder written at test time feeds the search; splits, augmentation
and the checks on bad input."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as L
import torch
from PIL import Image

from nas.budget import BudgetSpec
from nas.data.images import Augment, ImageDataModule
from nas.search import SupernetSearch
from tests.conftest import TINY
from tests.nas.image_folder import write_image_folder
from tests.nas.test_data import write_idx

NO_AUG = Augment(enabled=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """4 classes x 60 train + 10 test grayscale 28x28 PNGs."""
    return write_image_folder(tmp_path_factory.mktemp("folder"))


def module(root, **kwargs) -> ImageDataModule:
    kwargs.setdefault("channels", 1)
    kwargs.setdefault("batch_size", 32)
    return ImageDataModule(str(root), **kwargs)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, **kwargs)


def test_a_search_runs_end_to_end_from_an_image_folder(folder, tiny_table, tmp_path):
    L.seed_everything(0)
    search = SupernetSearch(space=TINY, cost_table=tiny_table, budget=BudgetSpec(fraction=0.3),
                            warmup_epochs=0, arch_lr=0.05, sandwich_random=1)
    alpha0 = {k: p.detach().clone() for k, p in search.alpha.named_parameters()}
    dm = module(folder, image_size=16, augment=Augment(scale=(0.5, 1.0), mixup_alpha=0.2))
    run = trainer(limit_train_batches=3, limit_val_batches=1)
    run.fit(search, dm)
    assert run.global_step == 3 * 2  # two optimizer steps (weights, α) per batch
    assert dm.input_shape == (1, 16, 16) and dm.num_classes == 4
    assert any(not torch.equal(p, alpha0[k]) for k, p in search.alpha.named_parameters())
    assert torch.isfinite(run.callback_metrics["train/loss_relaxed"])
    assert 0.0 <= float(run.callback_metrics["val/acc"]) <= 1.0
    (result,) = run.test(search, dm, verbose=False)
    assert 0.0 <= result["test/acc"] <= 1.0
    run.save_checkpoint(tmp_path / "search.ckpt")  # the data module's options load safely
    saved = torch.load(tmp_path / "search.ckpt", weights_only=True)
    assert saved["datamodule_hyper_parameters"]["augment"]["mixup_alpha"] == 0.2


def test_split_is_seeded_disjoint_and_the_same_on_every_rerun(folder):
    def split(seed):
        dm = module(folder, data_seed=seed)
        dm.setup("fit")
        return dm

    a, b, other = split(0), split(0), split(1)
    idx = a.split_indices
    assert torch.cat(list(idx.values())).sort().values.equal(torch.arange(240))
    assert {s: len(i) for s, i in idx.items()} == {"search": 48, "val": 24, "train": 168}
    assert all(idx[s].equal(b.split_indices[s]) for s in idx)
    assert not idx["search"].equal(other.split_indices["search"])
    # the views hold exactly those files, in that order
    files = [path for path, _ in a.datasets["val"].dataset.samples]
    assert [files[i] for i in a.datasets["val"].indices] == [files[i] for i in idx["val"]]


def test_augmentation_only_on_the_train_split(folder):
    dm = module(folder, augment=Augment(scale=(0.2, 0.5), hflip=0.5, re_prob=0.5))
    dm.setup("fit")
    torch.manual_seed(0)
    train = [dm.datasets["train"][0][0] for _ in range(4)]
    assert any(not torch.equal(train[0], t) for t in train[1:])
    for split in ("search", "val", "test"):
        view = dm.datasets[split]
        assert torch.equal(view[0][0], view[0][0])
        # independent: the PNG's pixels normalized with the module's mean and std
        path = view.dataset.samples[int(view.indices[0])][0]
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
        expected = (torch.from_numpy(pixels) - 0.5) / 0.5
        torch.testing.assert_close(view[0][0], expected[None])


def test_mixup_touches_only_the_weight_steps_batch(folder):
    dm = module(folder, augment=Augment(mixup_alpha=1.0, cutmix_alpha=1.0))
    dm.setup("fit")
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 4
    batch = {"train": (x, y), "search": (x, y)}
    dm.trainer = SimpleNamespace(training=True)
    mixed = dm.on_after_batch_transfer(batch, 0)
    soft = mixed["train"][1]
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
    assert mixed["search"][1] is y and mixed["search"][0] is x
    dm.trainer = SimpleNamespace(training=False)  # validation / test batches pass untouched
    assert dm.on_after_batch_transfer((x, y), 0) == (x, y)


def test_native_size_rgb_folder_and_workers(tmp_path):
    root = write_image_folder(tmp_path, per_class=20, classes=2, test_per_class=2, rgb=True,
                              size=12)
    dm = ImageDataModule(str(root), batch_size=4, num_workers=1, augment=NO_AUG)
    dm.setup("fit")
    assert dm.input_shape == (3, 12, 12)
    images, labels = next(iter(dm.weights_dataloader()))
    assert images.shape == (4, 3, 12, 12) and labels.dtype == torch.long


def test_a_torchvision_dataset_by_name(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 200), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte",
                  torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8), False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.arange(n, dtype=torch.uint8) % 10,
                  False)
    dm = ImageDataModule(str(tmp_path), dataset="FashionMNIST", channels=1, batch_size=4,
                         search_fraction=0.3, val_fraction=0.3, augment=NO_AUG)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.input_shape == (1, 28, 28)
    assert len(dm.datasets["test"]) == 10
    assert dm.datasets["test"][3][1] == 3


# -- bad input: one line, before training -----------------------------------------------------
def one_line_error(dm, match: str) -> str:
    with pytest.raises(ValueError, match=match) as excinfo:
        dm.setup("fit")
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_a_folder_with_no_images(tmp_path):
    one_line_error(module(tmp_path), "no folder .*train.*the layout is")
    (tmp_path / "train").mkdir()
    one_line_error(module(tmp_path), "no images in .*train")
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    one_line_error(module(tmp_path), "no images in .*train.*cat")


def test_mixed_sizes_need_a_resize(tmp_path):
    root = write_image_folder(tmp_path, per_class=20, classes=2, test_per_class=0)
    Image.new("L", (20, 20)).save(root / "train" / "c1" / "odd.png")
    message = one_line_error(module(root, batch_size=4), "mixed sizes")
    assert "28x28" in message and "20x20" in message and "odd.png" in message
    resized = module(root, batch_size=4, image_size=16)
    resized.setup("fit")
    assert resized.input_shape == (1, 16, 16)
    assert next(iter(resized.val_dataloader()))[0].shape[1:] == (1, 16, 16)


def test_a_class_missing_from_a_split(tmp_path):
    root = write_image_folder(tmp_path, per_class=20, classes=2, test_per_class=2)
    shutil.copytree(root / "train" / "c1", root / "train" / "c2")
    one_line_error(module(root, batch_size=4), "class 'c2' is in train/ but not in test/")
    rare = root / "train" / "c2"
    for path in sorted(rare.iterdir())[1:]:  # one image: it lands in one split only
        path.unlink()
    shutil.copytree(rare, root / "test" / "c2")
    message = one_line_error(module(root, batch_size=4), "class 'c2' .* has no images in the")
    assert "1 in" in message


def test_labels_out_of_range(folder, tiny_table, tmp_path):
    one_line_error(module(folder, num_classes=3), r"labels run 0..3 .* 'c3' \(label 3\)")
    five = write_image_folder(tmp_path, per_class=20, classes=5, test_per_class=0)
    search = SupernetSearch(space=TINY, cost_table=tiny_table)  # 4 classes
    run = trainer(limit_train_batches=1)
    with pytest.raises(ValueError, match="the space's num_classes is 4"):
        run.fit(search, module(five, batch_size=4, image_size=16))
    assert run.global_step == 0
    with pytest.raises(ValueError, match="num_classes is 5 but space 'tiny' has 4 outputs"):
        trainer().fit(search, module(five, batch_size=4, image_size=16, num_classes=5))


def test_image_size_must_match_the_space(folder, tiny_table):
    search = SupernetSearch(space=TINY, cost_table=tiny_table)
    run = trainer(limit_train_batches=1)
    with pytest.raises(ValueError, match="1x28x28 but space 'tiny' takes 1x16x16.*image_size: 16"):
        run.fit(search, module(folder))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"channels": 2}, "channels"),
    ({"augment": Augment(mixup_alpha=0.2), "batch_size": 5}, "even"),
    ({"mean": (0.5, 0.5)}, "mean"),
    ({"dataset": "NoSuchDataset"}, "NoSuchDataset"),
    ({"dataset": "CIFAR10"}, "dataset CIFAR10 at .*not found"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        module(tmp_path, **kwargs).setup()


def test_bad_augment_values():
    with pytest.raises(ValueError, match="augment.scale"):
        Augment(scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="augment.hflip"):
        Augment(hflip=2.0)


@pytest.mark.slow  # two processes start: ~40 s on 2 cores
def test_ddp_ranks_share_the_split_and_shard_the_batches(folder, tiny_table, tmp_path):
    script = Path(__file__).with_name("ddp_folder_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(30500 + os.getpid() % 1000)}
    run = subprocess.run([sys.executable, str(script), "folder", str(folder), tiny_table,
                          str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for split in ("train", "search", "val"):
        assert ranks[0]["split"][split].equal(ranks[1]["split"][split])
    for split in ("train", "search"):
        shards = [set(r["seen"][split]) for r in ranks]
        assert len(shards[0]) == len(shards[1]) > 0
        assert not shards[0] & shards[1]  # each rank its own shard
        assert shards[0] | shards[1] <= set(range(len(ranks[0]["split"][split])))


def test_the_search_command_takes_the_folder_module_and_reports_bad_input_in_one_line(
        folder, tiny_table, tmp_path, capsys, monkeypatch):
    from nas.cli import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    common = ["search", "fit", f"--model.space={TINY}", f"--model.cost_table={tiny_table}",
              "--model.warmup_epochs=0", "--data=nas.data.images.ImageDataModule",
              "--data.channels=1", "--data.image_size=16", "--data.batch_size=32",
              "--data.augment.auto_augment=rand-m9-mstd0.5", "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
              "--trainer.logger=false", "--trainer.enable_progress_bar=false",
              f"--trainer.default_root_dir={tmp_path}"]
    assert main([*common, f"--data.root={folder}"]) == 0
    assert main([*common, f"--data.root={tmp_path / 'empty'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hwnas search: error: root: no folder") and "Traceback" not in err
