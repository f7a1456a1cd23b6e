"""CUDA paths: skipped without a GPU (CI has none); run on a GPU machine before a release."""

import random

import pytest
import pytorch_lightning as L
import torch

from costmodels import CostTable
from nas.budget import BudgetSpec
from nas.data.splits import SyntheticDataModule
from nas.search import SupernetSearch
from supernet import SuperNet, extract
from tests.conftest import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_supernet_on_cuda_matches_extracted_and_relaxed(tiny_space):
    net = SuperNet(tiny_space).cuda().eval()
    x = torch.randn(4, 1, 16, 16, device="cuda")
    for seed in range(5):
        arch = tiny_space.sample(random.Random(seed))
        with torch.no_grad():
            y = net(x, arch)
            ys = extract(net, arch)(x)
            yr = net(x, {k: v.cuda() for k, v in tiny_space.one_hot(arch).items()})
        for a, b, c in zip(y, ys, yr, strict=False):
            assert torch.allclose(a, b, atol=1e-4) and torch.allclose(a, c, atol=1e-4)


def test_search_runs_on_one_gpu(tiny_space, tiny_table):
    module = SupernetSearch(space=TINY, cost_table=tiny_table,
                            budget=BudgetSpec(fraction=0.3), warmup_epochs=0)
    devices = []

    class RecordDevice(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            devices.append(next(pl_module.alpha.parameters()).device.type)

    trainer = L.Trainer(accelerator="gpu", devices=1, max_epochs=1, limit_train_batches=3,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[RecordDevice()])
    trainer.fit(module, SyntheticDataModule(num_samples=384, batch_size=32))
    assert devices == ["cuda"] * 3
    assert any(p.abs().sum() > 0 for p in module.alpha.parameters())  # α moved
    table = CostTable.load(tiny_table)
    assert module.expected["latency_ms"].concrete(module.alpha.argmax()) > 0 and len(table) > 0
