"""A short search from an image folder or its litdata shards on 2 CPU processes (DDP, gloo);
each rank saves its split and what its loaders gave it (split-local indices for the folder,
source indices for the stream).

Usage: python tests/nas/ddp_folder_run.py folder|stream DATA TABLE OUT_DIR  (Lightning
re-launches it for rank 1)
"""

import sys
from pathlib import Path

import pytorch_lightning as L
import torch
from pytorch_lightning.strategies import DDPStrategy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nas.budget import BudgetSpec  # noqa: E402
from nas.data.images import Augment, ImageDataModule  # noqa: E402
from nas.data.streaming import StreamingImageDataModule  # noqa: E402
from nas.search import SupernetSearch  # noqa: E402


def main(kind: str, data: str, table: str, out: str) -> None:
    L.seed_everything(0)
    module = SupernetSearch(space=str(ROOT / "configs/spaces/tiny.yaml"), cost_table=table,
                            budget=BudgetSpec(fraction=0.3), warmup_epochs=0, sandwich_random=1)
    options = {"channels": 1, "image_size": 16, "batch_size": 16,
               "augment": Augment(scale=(0.5, 1.0))}
    if kind == "folder":
        dm = ImageDataModule(data, **options)
    else:  # a smaller batch: 24 val images are 12 per rank
        dm = StreamingImageDataModule(f"{data}/train", f"{data}/test", **{
            **options, "batch_size": 8})
    trainer = L.Trainer(
        accelerator="cpu", devices=2, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        strategy=DDPStrategy(find_unused_parameters=True, process_group_backend="gloo"))
    trainer.fit(module, dm)
    if kind == "folder":
        loaders = trainer.train_dataloader  # {"train": DataLoader, "search": DataLoader}
        seen = {split: list(loaders[split].sampler) for split in ("train", "search")}
        split = dm.split_indices
    else:
        seen = {}
        for name in ("train", "search"):
            dm.datasets[name].transform = lambda item: item["index"]
            seen[name] = list(iter(dm.datasets[name]))  # this rank's share of the stream
        split = {name: [list(map(str, part.subsampled_files)),
                        [list(map(int, r)) for r in part.region_of_interest]]
                 for name, part in dm.datasets.items() if name != "test"}
    torch.save({"split": split, "seen": seen, "steps": trainer.global_step},
               Path(out) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:5])
