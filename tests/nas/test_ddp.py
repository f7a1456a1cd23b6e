"""Two CPU processes (DDP over gloo) through the real CLI must end with the same α, λ and
weights, for every way users spell the strategy."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


def run_ddp(strategy: str, table: str, out, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "nas", "search", "fit",
            "--config", str(ROOT / "configs/search/tiny.yaml"), f"--model.cost_table={table}",
            "--model.sandwich_random=1", "--model.budget.fraction=0.3",
            "--trainer.devices=2", "--trainer.accelerator=cpu", f"--trainer.strategy={strategy}",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out}",
            f"--checkpoint.dirpath={out}/ckpt",
            "--trainer.callbacks+=tests.nas.ddp_run.SaveRankState",
            f"--trainer.callbacks.out_dir={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "MASTER_PORT": str(29500 + (os.getpid() + len(strategy)) % 1000)}
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_ranks_agree(out) -> None:
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert set(a) == set(b)
    alphas = [k for k in a if k.startswith("alpha.alpha")]
    assert alphas and any(k.endswith("lam") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between ranks"
    # and the search really moved α (a test that cannot fail proves nothing)
    assert any(a[k].abs().sum() > 0 for k in alphas)


@pytest.mark.slow  # seconds of training; CI runs the slow suite too
def test_plain_ddp_ranks_end_bit_identical(tiny_table, tmp_path):
    """`--trainer.strategy=ddp`: no unused-parameter search, so every parameter DDP holds
    must get a gradient in every backward."""
    run = run_ddp("ddp", tiny_table, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "unused" not in run.stderr
    assert_ranks_agree(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["auto", "ddp_spawn", "ddp_find_unused_parameters_true"])
def test_every_ddp_spelling_works(strategy, tiny_table, tmp_path):
    run = run_ddp(strategy, tiny_table, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_ranks_agree(tmp_path)


@pytest.mark.slow  # each rank builds the compiled graph: minutes on a small CPU
def test_compiled_ddp_ranks_end_bit_identical(tiny_table, tmp_path):
    """`--model.compile=true` under DDP: the compiled relaxed pass's gradients reach DDP's
    buckets like the eager ones, and both ranks end alike."""
    run = run_ddp("ddp", tiny_table, tmp_path, "--model.compile=true")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_ranks_agree(tmp_path)
    assert all(torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["compiled"]
               for r in (0, 1))
