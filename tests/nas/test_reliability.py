"""Faults during the search: NaN losses, damaged checkpoints, a killed process."""

import os
import signal
import subprocess
import sys
import time

import pytest
import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from nas.checkpoint_io import SafeCheckpointIO
from nas.data.splits import SyntheticDataModule
from nas.search import SupernetSearch, load_search
from supernet.io import CorruptFileError
from tests.conftest import ROOT, TINY


class PoisonedSearch(SupernetSearch):
    """Its task loss turns NaN on chosen (epoch, batch) steps."""

    poison: set = set()

    def training_step(self, batch, batch_idx):
        self._poisoned = (self.current_epoch, batch_idx) in self.poison or (
            self.current_epoch, "*") in self.poison
        return super().training_step(batch, batch_idx)

    def task_loss(self, logits, y):
        loss = super().task_loss(logits, y)
        return loss * float("nan") if getattr(self, "_poisoned", False) else loss


def run(module, root, epochs=2):
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, limit_train_batches=4,
        plugins=[SafeCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=root, save_last=True)])
    trainer.fit(module, SyntheticDataModule(num_samples=384, batch_size=32))
    return trainer


def make(table, poison, **kw):
    PoisonedSearch.poison = poison
    return PoisonedSearch(space=TINY, cost_table=table, warmup_epochs=0, sandwich_random=1, **kw)


def test_nan_steps_are_skipped_and_counted(tiny_table, tmp_path):
    module = make(tiny_table, {(0, 1), (0, 2)})
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = run(module, tmp_path, epochs=1)
    assert trainer.callback_metrics["train/skipped_steps"] == 2  # both in a row, then reset
    assert module.bad_steps == 0
    assert all(torch.isfinite(v).all() for v in module.net.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in module.net.state_dict().items())


def test_too_many_nan_steps_stop_with_a_usable_last_checkpoint(tiny_table, tmp_path):
    module = make(tiny_table, {(1, "*")}, max_bad_steps=3)
    with pytest.raises(FloatingPointError, match="3 weights steps in a row had a NaN/Inf loss"):
        run(module, tmp_path, epochs=2)
    good = load_search(tmp_path / "last.ckpt")  # written after epoch 0, before the NaNs
    assert all(torch.isfinite(v).all() for v in good.state_dict().values())


def test_non_finite_weights_are_never_written(tmp_path):
    state = {"state_dict": {"w": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(FloatingPointError, match="refusing to write checkpoint"):
        SafeCheckpointIO().save_checkpoint(state, tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_damaged_checkpoint_gives_one_clear_error(tiny_table, tmp_path, damage):
    path = tmp_path / "c.ckpt"
    if damage != "missing":
        run(make(tiny_table, set()), tmp_path, epochs=1)
        data = (tmp_path / "last.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 999)
    with pytest.raises(CorruptFileError, match="search checkpoint"):
        load_search(path)
    with pytest.raises(CorruptFileError, match="search checkpoint"):
        SafeCheckpointIO().load_checkpoint(path)


def test_checkpoint_with_code_is_refused(tmp_path):
    """A pickled object that would run code on load is rejected (weights_only)."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": PoisonedSearch}, path)
    with pytest.raises(CorruptFileError, match="search checkpoint"):
        SafeCheckpointIO().load_checkpoint(path)


@pytest.mark.slow
def test_sigkill_then_resume_finishes(tiny_table, tmp_path):
    """Kill `hwnas search fit` at a random moment after its first checkpoint, then resume."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nas", "search", "fit",
            "--config", str(ROOT / "configs/search/tiny.yaml"),
            f"--model.cost_table={tiny_table}", f"--trainer.default_root_dir={out}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--trainer.max_epochs=4", "--trainer.limit_train_batches=3",
            f"--checkpoint.dirpath={out}/ckpt"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "ckpt" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert last.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() else "timed out"
    time.sleep(torch.rand(1).item() * 2)  # a random moment after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for f in (out / "ckpt").iterdir():  # every checkpoint on disk is whole
        load_search(f)
    resumed = subprocess.run(args + [f"--ckpt_path={last}"], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == 4  # the epoch counter after all four epochs


def test_last_checkpoint_follows_every_epoch_whatever_the_metric_did(tiny_table, tmp_path):
    """Lightning writes `save_last` only beside a new top-k checkpoint; ours is the latest."""
    from nas.callbacks import LatestCheckpoint

    class Worsening(L.Callback):  # val/acc falls every epoch: no new top-1 after epoch 0
        def on_validation_end(self, trainer, module):
            trainer.callback_metrics["val/acc"] = torch.tensor(1.0 - trainer.current_epoch / 10)

    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_train_batches=2, limit_val_batches=1,
        callbacks=[Worsening(), best, LatestCheckpoint(str(tmp_path))])
    trainer.fit(make(tiny_table, set()), SyntheticDataModule(num_samples=384, batch_size=32))
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == trainer.global_step and last["epoch"] == 3
    assert "epoch=0" in best.best_model_path  # the monitored checkpoint stayed at epoch 0
