"""Image-folder loader throughput against what the search step consumes (32x32 RGB space).

For each worker count N, in interleaved rounds inside this one process:
- loader alone: images/s of the search's combined loader (a `train` batch, augmented as in
  configs/search/rgb32_folder.yaml, plus a `search` batch per step), first batch excluded
  (worker start-up);
- in a search: a short `trainer.fit` with the same data module; per batch, the time from the
  previous batch's end to this batch's start (waiting for data) and the step itself (weight
  step with the sandwich + α step). The step consumes 2 x batch_size images.
The loader keeps up when its throughput exceeds the step's consumption and the search's
data-wait share stays small. The folder is Fashion-MNIST saved as tinted 32x32 RGB PNGs
(written once, if missing).

    python benchmarks/loader_throughput.py --out runs/bench/loader_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as L
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.data.images import Augment, ImageDataModule  # noqa: E402
from nas.data.splits import find_fashion_mnist, read_fashion_mnist  # noqa: E402
from nas.search import SupernetSearch  # noqa: E402

CONFIG = ROOT / "configs" / "search" / "rgb32_folder.yaml"


def write_rgb32_folder(root: Path, per_class: int, test_per_class: int,
                       fmnist_dir: str | None) -> Path:
    """Fashion-MNIST as <root>/{train,test}/<class>/<i>.png, 32x32 RGB, tinted per class."""
    if (root / "train").is_dir():
        return root
    tx, ty, vx, vy = read_fashion_mnist(find_fashion_mnist(fmnist_dir))
    for split, x, y, n in (("train", tx, ty, per_class), ("test", vx, vy, test_per_class)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            tint = np.array([1.0, 0.55 + 0.05 * c, 1.0 - 0.05 * c])
            for i, image in enumerate(x[y == c][:n].numpy()):
                small = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR))
                rgb = (small[..., None] * tint).clip(0, 255).astype(np.uint8)
                Image.fromarray(rgb).save(folder / f"{i}.png")
    return root


def datamodule(folder: Path, batch_size: int, workers: int) -> ImageDataModule:
    args = dict(yaml.safe_load(CONFIG.read_text())["data"]["init_args"])
    args["augment"] = Augment(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in args["augment"].items()})
    args.update(root=str(folder), batch_size=batch_size, num_workers=workers)
    return ImageDataModule(**args)


def search_module() -> SupernetSearch:
    model = dict(yaml.safe_load(CONFIG.read_text())["model"])
    model.update(space=str(ROOT / model["space"]), cost_table=str(ROOT / model["cost_table"]),
                 warmup_epochs=0)
    return SupernetSearch(**model)


def loader_alone(folder: Path, batch_size: int, workers: int, steps: int) -> float:
    """Images/s of the combined train+search loader, first batch excluded."""
    dm = datamodule(folder, batch_size, workers)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return 2 * batch_size * steps / (time.perf_counter() - start)


class StepClock(L.Callback):
    """Per batch: seconds waiting for data (previous end → this start) and in the step."""

    def __init__(self) -> None:
        self.wait, self.step, self.last_end, self.start = [], [], None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.start = time.perf_counter()
        if self.last_end is not None:
            self.wait.append(self.start - self.last_end)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.last_end = time.perf_counter()
        self.step.append(self.last_end - self.start)


def in_search(folder: Path, batch_size: int, workers: int, steps: int) -> dict[str, float]:
    L.seed_everything(0)
    clock = StepClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=steps + 1,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[clock])
    trainer.fit(search_module(), datamodule(folder, batch_size, workers))
    step, wait = statistics.median(clock.step[1:]), statistics.median(clock.wait)
    return {"step_s": step, "wait_s": wait, "wait_share": sum(clock.wait) / (
        sum(clock.wait) + sum(clock.step[1:])), "consumed_images_per_s": 2 * batch_size / step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="runs/rgb32_folder", help="image folder (written "
                        "from Fashion-MNIST if missing)")
    parser.add_argument("--fmnist-dir", default=None, help="Fashion-MNIST root (default: system)")
    parser.add_argument("--per-class", type=int, default=500, help="train images per class")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench/loader_throughput.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = write_rgb32_folder(Path(args.folder), args.per_class, args.per_class // 5,
                                args.fmnist_dir)
    rows: dict[int, list[dict]] = {n: [] for n in args.workers}
    for r in range(args.rounds):
        for n in args.workers:  # interleaved: every setting once per round
            row = {"loader_images_per_s": loader_alone(folder, args.batch_size, n, args.steps)}
            row.update(in_search(folder, args.batch_size, n, args.steps))
            row["loader_over_consumption"] = (row["loader_images_per_s"]
                                              / row["consumed_images_per_s"])
            rows[n].append(row)
            print(f"round {r} workers {n}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()),
                  flush=True)
    summary = {str(n): {k: statistics.median(row[k] for row in rs) for k in rs[0]}
               for n, rs in rows.items()}
    result = {"figure": "loader_throughput", "command": " ".join(sys.argv),
              "machine": {"cpu": platform.processor() or platform.machine(),
                          "nproc": os.cpu_count(),
                          "torch": torch.__version__},
              "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
              "median": summary, "rounds_raw": {str(n): rs for n, rs in rows.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for n, s in summary.items():
        print(f"workers {n}: loader {s['loader_images_per_s']:.0f} img/s, step consumes "
              f"{s['consumed_images_per_s']:.0f} img/s ({s['loader_over_consumption']:.1f}x), "
              f"data wait {100 * s['wait_share']:.1f}% of the search's time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
