"""A short search from an image folder on 2 CPU processes (DDP, gloo); each rank saves its
split and the split-local indices its samplers gave it.

Usage: python tests/nas/ddp_folder_run.py FOLDER TABLE OUT_DIR  (Lightning re-launches it)
"""

import sys
from pathlib import Path

import pytorch_lightning as L
import torch
from pytorch_lightning.strategies import DDPStrategy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nas.budget import BudgetSpec  # noqa: E402
from nas.image_data import Augment, ImageDataModule  # noqa: E402
from nas.search import SupernetSearch  # noqa: E402


def main(folder: str, table: str, out: str) -> None:
    L.seed_everything(0)
    module = SupernetSearch(space=str(ROOT / "configs/spaces/tiny.yaml"), cost_table=table,
                            budget=BudgetSpec(fraction=0.3), warmup_epochs=0, sandwich_random=1)
    dm = ImageDataModule(folder, channels=1, image_size=16, batch_size=16,
                         augment=Augment(scale=(0.5, 1.0)))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        strategy=DDPStrategy(find_unused_parameters=True, process_group_backend="gloo"))
    trainer.fit(module, dm)
    loaders = trainer.train_dataloader  # {"train": DataLoader, "search": DataLoader}
    seen = {split: list(loaders[split].sampler) for split in ("train", "search")}
    torch.save({"split": dm.split_indices, "seen": seen, "steps": trainer.global_step},
               Path(out) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:4])
