"""Data beyond one disk: image shards streamed with litdata, split, augmented and fed like
`ImageDataModule`.

litdata (Lightning's streaming format) rather than WebDataset: its `StreamingDataset` gives each
DDP rank and each worker its own chunks with equal lengths per rank (a rank that runs out early
would hang DDP, WebDataset leaves that to the user), shuffles by (seed, epoch), reads local
folders or object storage (s3://, gs://) through a local cache, and resumes mid-epoch. The
`search` and `val` splits are carved from the training shards by `litdata.train_test_split`
with `data_seed` (whole chunks, shuffled by the seed), so every rank carves the same splits.

Write shards once: ``python -m nas.data.streaming --root <folder or torchvision root> --out <dir>``
(<dir>/train and <dir>/test), then search with ``--data nas.data.streaming.StreamingImageDataModule
--data.train_dir <dir>/train --data.test_dir <dir>/test``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import litdata
import torch
from PIL import Image
from torch.utils.data import Dataset

from nas.data.images import MODES, Augment, ImageDataModule


class ShardItem:
    """Item `i` of a dataset of (image, label) as a shard record: encoded image bytes (the file
    itself when the dataset lists files, else PNG), the label and the source index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.files = getattr(dataset, "samples", None)

    def __call__(self, i: int) -> dict[str, Any]:
        if self.files is not None:
            path, label = self.files[i]
            data = Path(path).read_bytes()
        else:
            image, label = self.dataset[i]
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
        return {"index": i, "label": int(label), "image": data}


def write_shards(dataset: Dataset, out_dir: str | Path, chunk_bytes: str = "64MB",
                 num_workers: int = 1, start_method: str | None = None, seed: int = 0) -> Path:
    """Write `dataset` as litdata shards (chunks of `chunk_bytes`) in `out_dir`, with
    `num_workers` writer processes (started by `start_method`: litdata's default is spawn).

    Items go in a seeded random order: a stream shuffles chunks and items near each other, so
    class-sorted sources (an image folder) would otherwise give single-class batches and
    chunk-level splits that miss classes."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    litdata.optimize(fn=ShardItem(dataset), inputs=order.tolist(),
                     output_dir=str(out_dir), chunk_bytes=chunk_bytes, num_workers=num_workers,
                     mode="overwrite", verbose=False, start_method=start_method)
    return Path(out_dir)


class DecodeItem:
    """A shard record → (transformed image tensor, label); labels are checked as they stream."""

    def __init__(self, transform, mode: str, num_classes: int) -> None:
        self.transform, self.mode, self.num_classes = transform, mode, num_classes

    def __call__(self, item: dict[str, Any]):
        label = int(item["label"])
        if not 0 <= label < self.num_classes:
            raise ValueError(f"shard item {item['index']} has label {label}, outside 0.."
                             f"{self.num_classes - 1}; raise num_classes or relabel the data")
        image = Image.open(io.BytesIO(item["image"])).convert(self.mode)
        return self.transform(image), label


class StreamingImageDataModule(ImageDataModule):
    """Streams shards written by `write_shards` from `train_dir` (and `test_dir`), local paths or
    object-storage URLs, through `cache_dir`. Options as for `ImageDataModule`; `num_classes`
    must be given unless a search runs the module (then the space's). Streams are checked on
    their first image (size, shape) before training, and labels as they are read."""

    def __init__(
        self,
        train_dir: str,
        test_dir: str | None = None,
        cache_dir: str | None = None,
        image_size: int | None = None,
        channels: int = 3,
        num_classes: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        crop_pct: float | None = None,
        interpolation: str = "bilinear",
        augment: Augment | None = None,
        search_fraction: float = 0.2,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        data_seed: int = 0,
    ) -> None:
        super().__init__(
            train_dir, image_size=image_size, channels=channels, num_classes=num_classes,
            mean=mean, std=std, crop_pct=crop_pct, interpolation=interpolation, augment=augment,
            search_fraction=search_fraction, val_fraction=val_fraction, batch_size=batch_size,
            num_workers=num_workers, pin_memory=pin_memory, data_seed=data_seed)
        self.train_dir, self.test_dir, self.cache_dir = train_dir, test_dir, cache_dir

    def _open(self, where: str) -> litdata.StreamingDataset:
        try:
            return litdata.StreamingDataset(where, cache_dir=self.cache_dir, seed=self.data_seed)
        except (FileNotFoundError, ValueError, AssertionError) as e:  # litdata asserts
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"no shards at {where!r} ({message}); write them with `python -m "
                             "nas.data.streaming --root <images> --out <dir>`") from None

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        base = self._open(self.train_dir)
        space = getattr(getattr(self.trainer, "lightning_module", None), "search_space", None)
        self.label_width = self._num_classes or (space.num_classes if space else None)
        if self.label_width is None:
            raise ValueError("num_classes: a stream's labels are not scanned ahead; give "
                             "num_classes (or run the module under a search, which uses the "
                             "space's)")
        if self.image_size is None:  # no resize: the first image sets the size
            first = Image.open(io.BytesIO(base[0]["image"]))
            w, h = first.size
            if w != h:
                raise ValueError(f"shard images are {w}x{h} (WxH) but the network takes square "
                                 "inputs; set image_size to resize and centre-crop them")
            self.size = w
        if space is not None:
            self._check_space(space)
        fractions = [self.search_fraction, self.val_fraction]  # litdata wants a sum <= 1 exactly
        fractions.insert(0, 1.0 - sum(fractions) - 1e-9)
        parts = dict(zip(("train", "search", "val"),
                         litdata.train_test_split(base, fractions, seed=self.data_seed),
                         strict=True))
        if self.test_dir:
            parts["test"] = self._open(self.test_dir)
        train_tf, eval_tf = self.transforms()
        mode = MODES[self.channels]
        ranks = self.trainer.world_size if self.trainer is not None else 1
        for name, part in parts.items():
            part.transform = DecodeItem(train_tf if name == "train" else eval_tf, mode,
                                        self.label_width)
            part.shuffle = name in ("train", "search")
            # per rank under DDP, where litdata also drops evaluation splits' partial batches
            if (name in ("train", "search") or ranks > 1) and len(part) < self.batch_size:
                raise ValueError(f"the {name} split streams {len(part)} samples per rank, "
                                 f"fewer than batch_size={self.batch_size}; lower batch_size "
                                 "or use more data")
        self.datasets = parts
        self.mixup = self.build_mixup()

    def _loader(self, split: str, shuffle: bool) -> litdata.StreamingDataLoader:
        if not self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} loader")
        return litdata.StreamingDataLoader(
            self.datasets[split], batch_size=self.batch_size, drop_last=shuffle,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory)

    def test_dataloader(self):
        if self.datasets and "test" not in self.datasets:
            raise ValueError("no test split: pass test_dir (shards written from the test set)")
        return self._loader("test", shuffle=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nas.data.streaming", description=(
        "Write an image folder or a torchvision dataset as litdata shards: <out>/train, "
        "<out>/test."))
    parser.add_argument("--root", required=True, help="image folder (<root>/train/<class>/...) "
                                                      "or a torchvision dataset root")
    parser.add_argument("--out", required=True, help="output directory (or s3:// URL)")
    parser.add_argument("--dataset", default="ImageFolder", help="torchvision class (ImageFolder)")
    parser.add_argument("--chunk-bytes", default="64MB", help="shard chunk size (64MB)")
    parser.add_argument("--workers", type=int, default=1, help="writer processes (1)")
    args = parser.parse_args(argv)
    try:
        train, test = ImageDataModule(args.root, dataset=args.dataset).open()
    except ValueError as error:  # bad input: one line, as every hwnas command
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    for name, dataset in (("train", train), ("test", test)):
        if dataset is not None:
            write_shards(dataset, f"{args.out.rstrip('/')}/{name}", args.chunk_bytes,
                         args.workers)
            print(f"wrote {len(dataset)} {name} images as shards in {args.out}/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
