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
from supernet.fused import kernels, mixed_weight_quant
from supernet.mix import Mix
from supernet.quant import ActQuantizer, mixed_weight_reference
from tests.conftest import TINY
from tests.nas.test_precision import assert_trains_everything, search
from tests.supernet.test_fused import assert_close_rel, leaves

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


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("bits", [(4,), (32,), (4, 8, 32)])
def test_fused_quantizers_on_cuda_equal_the_reference(bits, compiled):
    """The kernels a CUDA search runs (eager, or compiled by Triton) against the per-bit-width
    reference on the same device: eager gives the same floats forward; gradients to 1e-6
    (1e-5 compiled, whose sums run in another order)."""
    torch.manual_seed(len(bits))
    quant = ActQuantizer(bits).cuda()
    x0 = torch.randn(8, 16, 7, 7, device="cuda") * 3
    w0 = torch.randn(16, 8, 3, 3, device="cuda")
    p0 = torch.softmax(torch.randn(len(bits), device="cuda"), -1)
    gx, gw = torch.randn_like(x0), torch.randn_like(w0)
    out = []
    for fused in (True, False):
        quant.zero_grad()
        x, w, p = leaves(x0, w0, p0)
        with kernels(compiled=compiled and fused):
            y = quant(x, Mix(p, bits)) if fused else quant.reference(x, Mix(p, bits))
            v = mixed_weight_quant(w, p, bits) if fused else mixed_weight_reference(w, Mix(p, bits))
        (y * gx).sum().add((v * gw).sum()).backward()
        step = quant.step.grad
        out.append((y.detach(), v.detach(), x.grad, w.grad, p.grad,
                    torch.zeros(len(bits), device="cuda") if step is None else step.clone()))
    fused, ref = out
    for a, b in zip(fused[:2], ref[:2], strict=True):
        if compiled:  # Triton contracts the weighted sum into FMAs: within 2 ulp, no level moves
            torch.testing.assert_close(a, b, rtol=2.5e-7, atol=1e-12)
        else:
            assert torch.equal(a, b)
    for a, b in zip(fused[2:], ref[2:], strict=True):
        assert_close_rel(a, b, 1e-5 if compiled else 1e-6)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_search_on_one_gpu(tiny_table, precision, tmp_path):
    """fp16 needs the gradient scaler under manual optimization; both must train the weights,
    the learned steps and α, and skip no step."""
    assert_trains_everything(*search(tiny_table, precision, tmp_path, accelerator="gpu"))
