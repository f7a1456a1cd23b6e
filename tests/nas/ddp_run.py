"""Run a short search on 2 CPU processes (DDP, gloo); each rank saves what must agree.

Usage: python tests/nas/ddp_run.py TABLE OUT_DIR  (Lightning re-launches this file for rank 1)
"""

import sys
from pathlib import Path

import pytorch_lightning as L
import torch
from pytorch_lightning.strategies import DDPStrategy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nas.budget import BudgetSpec  # noqa: E402
from nas.data import SyntheticDataModule  # noqa: E402
from nas.search import SupernetSearch  # noqa: E402


def main(table: str, out: str) -> None:
    L.seed_everything(0)
    module = SupernetSearch(space=str(ROOT / "configs/spaces/tiny.yaml"), cost_table=table,
                            budget=BudgetSpec(fraction=0.3), warmup_epochs=0, arch_lr=0.05,
                            sandwich_random=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, max_epochs=1, limit_train_batches=3, limit_val_batches=1,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        strategy=DDPStrategy(find_unused_parameters=True, process_group_backend="gloo"))
    trainer.fit(module, SyntheticDataModule(num_samples=384, batch_size=16))
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    torch.save({"state": state, "steps": trainer.global_step},
               Path(out) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:3])
