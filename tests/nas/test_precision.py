"""Mixed precision under the search's manual optimization, on the CPU: bf16 autocast, and fp16
autocast with a grad scaler (what 16-mixed runs on a GPU)."""

import pytest
import pytorch_lightning as L
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from nas.budget import BudgetSpec
from nas.data.splits import SyntheticDataModule
from nas.search import SupernetSearch
from tests.conftest import TINY

PLUGINS = {
    "32-true": lambda: {"precision": "32-true"},
    "bf16-mixed": lambda: {"precision": "bf16-mixed"},
    # Lightning maps 16-mixed on a CPU to bf16; this plugin keeps fp16 and its scaler
    "16-mixed": lambda: {"plugins": [MixedPrecision("16-mixed", "cpu",
                                                    torch.amp.GradScaler("cpu"))]},
}


def search(table: str, precision: str, tmp_path, accelerator: str = "cpu", plugin=None,
           **options) -> tuple[SupernetSearch, dict]:
    """Four steps at ``precision`` (on a GPU Lightning's own plugin: fp16 gets its scaler
    there), or under ``plugin``: the module and its state before training."""
    L.seed_everything(0)
    module = SupernetSearch(space=TINY, cost_table=table, budget=BudgetSpec(fraction=0.5),
                            warmup_epochs=0, sandwich_random=1, arch_lr=0.05, **options)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=1,
                        accelerator=accelerator, devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path,
                        **({"plugins": [plugin]} if plugin is not None
                           else PLUGINS[precision]() if accelerator == "cpu"
                           else {"precision": precision}))
    trainer.fit(module, SyntheticDataModule(num_samples=256, batch_size=32))
    return module, before


def weight_change(module: SupernetSearch, before: dict) -> float:
    after = module.state_dict()
    return sum((after[k] - before[k]).norm() ** 2 for k in before
               if k.startswith("net.stages") and k.endswith("conv_pw.weight")) ** 0.5


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_search_trains_weights_and_alpha(tiny_table, precision, tmp_path):
    assert_trains_everything(*search(tiny_table, precision, tmp_path))


def assert_trains_everything(module: SupernetSearch, before: dict) -> None:
    after = {k: v.cpu() for k, v in module.state_dict().items()}
    # parameters stay float32 (autocast computes in half precision), every one finite
    for name, p in module.named_parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all(), name
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("net.stages") and k.endswith("conv_pw.weight") for k in changed)
    # learned steps have no weight decay: they move only if their gradients reach them
    assert any(k.endswith("quant_mid.step") for k in changed)
    assert any(k.startswith("alpha.alpha") for k in changed)
    assert module.bad_steps == 0


def test_fp16_updates_are_as_large_as_float32_ones(tiny_table, tmp_path):
    """Under a grad scaler the weights' gradients are clipped after unscaling: clipped while
    still scaled (×65 536), every update shrank to weight decay alone. The scaler may skip
    a first overflowing step, so the sizes agree to a factor, not exactly."""
    full = weight_change(*search(tiny_table, "32-true", tmp_path))
    half = weight_change(*search(tiny_table, "16-mixed", tmp_path))
    assert 0.4 * full < half < 1.6 * full, (half, full)


@pytest.mark.parametrize("joint", [True, False])
def test_grad_scaler_updates_once_per_step(tiny_table, tmp_path, joint):
    """The scale moves once per training step, after both optimizers stepped: with the
    weights' update between them, α's gradients (from the same backward, in the joint step)
    were unscaled by the next scale. Growing at every clean update, four steps double the
    scale four times (it was eight: one update per optimizer)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=1)
    module, _ = search(tiny_table, "16-mixed", tmp_path, alpha_trains_weights=joint,
                       plugin=MixedPrecision("16-mixed", "cpu", scaler))
    assert module.bad_steps == 0
    assert scaler.get_scale() == 2.0 ** (8 + 4)
    assert "update" not in scaler.__dict__  # Lightning's own update is back
