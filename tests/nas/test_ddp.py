"""Two CPU processes (DDP over gloo) must end with the same α, λ and weights."""

import os
import subprocess
import sys
from pathlib import Path

import torch


def test_ddp_ranks_end_bit_identical(tiny_table, tmp_path):
    script = Path(__file__).with_name("ddp_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    run = subprocess.run([sys.executable, str(script), tiny_table, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert set(a) == set(b)
    alphas = [k for k in a if k.startswith("arch.alpha")]
    assert alphas and any(k.endswith("lam") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between ranks"
    # and the search really moved α (a test that cannot fail proves nothing)
    assert any(a[k].abs().sum() > 0 for k in alphas)
