"""Mixed precision under the search's manual optimization (CPU bf16 autocast)."""

import pytorch_lightning as L
import torch

from nas.budget import BudgetSpec
from nas.data.splits import SyntheticDataModule
from nas.search import SupernetSearch
from tests.conftest import TINY


def test_bf16_mixed_search_trains_weights_and_alpha(tiny_table, tmp_path):
    L.seed_everything(0)
    module = SupernetSearch(space=TINY, cost_table=tiny_table, budget=BudgetSpec(fraction=0.5),
                            warmup_epochs=0, sandwich_random=1, arch_lr=0.05)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1,
                        accelerator="cpu", precision="bf16-mixed", logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, SyntheticDataModule(num_samples=256, batch_size=32))
    after = module.state_dict()
    # parameters stay float32 (autocast computes in bf16), every one finite
    for name, p in module.named_parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all(), name
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("net.stages") and k.endswith("conv_pw.weight") for k in changed)
    assert any(k.endswith("quant_mid.step") for k in changed)  # learned steps learn under bf16
    assert any(k.startswith("alpha.alpha") for k in changed)
    assert module.bad_steps == 0
