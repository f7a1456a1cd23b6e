"""`ImageDataModule`: an image folder or any torchvision dataset, augmented with timm.

The training set is carved into `train` / `search` / `val` by the same seeded index split as
`SplitDataModule` (so every rank and rerun agrees); the test set stays apart. Only the `train`
split is augmented (timm's `create_transform`, and Mixup/CutMix on the batch, which the weight
step's cross-entropy takes as soft targets); `search`, `val` and `test` get the deterministic
eval transform, so the α step and the checkpoint monitor see clean images. Bad input (no
images, mixed sizes with no resize, a class missing from a split, labels the network has no
output for) is a one-line ValueError from `setup()`, before any step runs.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms.functional import to_pil_image

from nas.data.checks import (
    check_class_coverage,
    check_class_folders,
    check_label_range,
    check_one_size,
    dataset_labels,
)
from nas.data.splits import SplitDataModule

MODES = {1: "L", 3: "RGB"}


@dataclass
class Augment:
    """Train-split augmentation: timm's `create_transform` options and timm's Mixup/CutMix.

    `scale` is the random-resized-crop's area range (fraction of the image); `auto_augment` a
    timm policy string such as ``rand-m9-mstd0.5`` (RandAugment); `re_prob` the random-erasing
    probability. Mixup/CutMix is on when either alpha is > 0 (batch_size must then be even).
    """

    enabled: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: str | None = None
    re_prob: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        for name in ("hflip", "re_prob", "mixup_prob", "mixup_switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], "
                                 f"got {getattr(self, name)!r}")
        for name in ("color_jitter", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def mixes(self) -> bool:
        return self.enabled and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def dataset_class(name: str) -> type[Dataset]:
    """A torchvision dataset class by name (``ImageFolder``, ``CIFAR10``) or a dotted path."""
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module or "torchvision.datasets"), attr)
    except (ImportError, AttributeError):
        raise ValueError(f"dataset: no dataset class {name!r}; give a torchvision.datasets name "
                         "(ImageFolder, CIFAR10, ...) or a dotted path (my_pkg.MyDataset)") from None


def build_transforms(channels: int, size: int, *, resize: bool, mean, std, crop_pct,
                     interpolation: str, augment: Augment):
    """(train, eval): timm's augmenting train transform to `size` pixels, and a deterministic
    eval transform (timm's resize + centre crop when `resize`, else tensor + normalize only)."""
    shape = (channels, size, size)
    common = {"mean": mean, "std": std, "interpolation": interpolation}
    if resize:
        eval_tf = create_transform(shape, is_training=False, crop_pct=crop_pct, **common)
    else:
        eval_tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    a = augment
    if not a.enabled:
        return eval_tf, eval_tf
    train_tf = create_transform(
        shape, is_training=True, scale=a.scale, hflip=a.hflip, color_jitter=a.color_jitter,
        auto_augment=a.auto_augment, re_prob=a.re_prob, **common)
    return train_tf, eval_tf


class SplitView(Dataset):
    """Items `indices` of a dataset of (PIL image, label), as (transformed tensor, int label)."""

    def __init__(self, dataset: Dataset, indices: Tensor, transform, mode: str) -> None:
        self.dataset, self.indices, self.transform, self.mode = dataset, indices, transform, mode

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image, label = self.dataset[int(self.indices[i])]
        if not isinstance(image, Image.Image):
            image = to_pil_image(image)
        if image.mode != self.mode:
            image = image.convert(self.mode)
        return self.transform(image), int(label)


class ImageDataModule(SplitDataModule):
    """An image folder (``<root>/train/<class>/<image>``, optional ``<root>/test/...``) or any
    torchvision dataset class (``dataset: CIFAR10``), split, augmented and checked.

    `image_size` None keeps the images' own size (they must all share one square size);
    otherwise eval splits are resized and centre-cropped to it (timm, `crop_pct`). `mean`/`std`
    default to ImageNet's for RGB and 0.5 for grayscale. `num_classes` None takes the search
    space's (when a trainer runs the module) or the dataset's. `dataset_args` go to the dataset
    class as keyword arguments (never `download` unless you pass it).
    """

    def __init__(
        self,
        root: str,
        dataset: str = "ImageFolder",
        dataset_args: dict[str, Any] | None = None,
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
        super().__init__(search_fraction=search_fraction, val_fraction=val_fraction,
                         batch_size=batch_size, num_workers=num_workers, data_seed=data_seed)
        if channels not in MODES:
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be a positive pixel count or None, got {image_size}")
        self.augment = augment if augment is not None else Augment()
        self.hparams["augment"] = asdict(self.augment)  # plain data: weights_only checkpoints
        if self.augment.mixes and batch_size % 2:
            raise ValueError(f"batch_size must be even with Mixup/CutMix, got {batch_size}")
        self.root, self.dataset_name = root, dataset
        self.dataset_args = dict(dataset_args or {})
        self.image_size, self.channels, self._num_classes = image_size, channels, num_classes
        self.mean = tuple(mean) if mean else (IMAGENET_DEFAULT_MEAN if channels == 3 else (0.5,))
        self.std = tuple(std) if std else (IMAGENET_DEFAULT_STD if channels == 3 else (0.5,))
        for name, value in (("mean", self.mean), ("std", self.std)):
            if len(value) != channels:
                raise ValueError(f"{name} needs one value per channel ({channels}), got {value}")
        self.crop_pct, self.interpolation = crop_pct, interpolation
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.size: int | None = image_size  # the native size once setup() has read the images
        self.classes: list[str] | None = None
        self.mixup: Mixup | None = None

    # -- reading ------------------------------------------------------------------------------
    def open(self) -> tuple[Dataset, Dataset | None]:
        """The raw training and test datasets (items: PIL image, int label); test may be None."""
        cls = dataset_class(self.dataset_name)
        params = inspect.signature(cls).parameters
        root = Path(self.root).expanduser()
        if "train" in params or "split" in params:  # CIFAR10, MNIST, SVHN, Food101, ...
            key, values = ("train", (True, False)) if "train" in params else (
                "split", ("train", "test"))
            args = {"download": False} if "download" in params else {}
            args.update(self.dataset_args)
            try:
                return tuple(cls(str(root), **{key: v}, **args) for v in values)  # type: ignore
            except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted"
                raise ValueError(f"dataset {self.dataset_name} at {str(root)!r}: "
                                 f"{str(e).splitlines()[0]}") from None
        return self._open_folder(cls, root / "train"), (
            self._open_folder(cls, root / "test") if (root / "test").is_dir() else None)

    def _open_folder(self, cls, folder: Path) -> Dataset:
        layout = "the layout is <root>/train/<class>/<image> (and optionally <root>/test/...)"
        if not folder.is_dir():
            raise ValueError(f"root: no folder {str(folder)!r}; {layout}")
        try:
            return cls(str(folder), **self.dataset_args)
        except FileNotFoundError as e:  # torchvision: no class folder, or a class with no image
            raise ValueError(f"no images in {str(folder)!r}: {e} ({layout})") from None

    # -- setup ----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        train, test = self.open()
        self.classes = getattr(train, "classes", None)
        if test is not None:
            check_class_folders(self.classes, getattr(test, "classes", None))
        space = getattr(getattr(self.trainer, "lightning_module", None), "search_space", None)
        if space is not None and self._num_classes not in (None, space.num_classes):
            raise ValueError(f"num_classes is {self._num_classes} but space {space.name!r} has "
                             f"{space.num_classes} outputs; leave num_classes unset to use the "
                             "space's")
        labels = {"train": dataset_labels(train)}
        if test is not None:
            labels["test"] = dataset_labels(test)
        self.label_width = self._num_classes or (space.num_classes if space else None) or (
            len(self.classes) if self.classes else int(labels["train"].max()) + 1)
        for name, y in labels.items():
            check_label_range(y, self.label_width, name, self.classes,
                              "the space's num_classes" if space and not self._num_classes
                              else "num_classes")
        idx = self.carve(len(train))
        check_class_coverage({s: labels["train"][i] for s, i in idx.items()} | (
            {"test": labels["test"]} if test is not None else {}), self.classes)
        if self.image_size is None:
            self.size = check_one_size([train] + ([test] if test is not None else []))
        if space is not None:
            self._check_space(space)
        train_tf, eval_tf = self.transforms()
        mode = MODES[self.channels]
        self.datasets = {s: SplitView(train, i, train_tf if s == "train" else eval_tf, mode)
                         for s, i in idx.items()}
        if test is not None:
            self.datasets["test"] = SplitView(test, torch.arange(len(test)), eval_tf, mode)
        self.mixup = self.build_mixup()

    def build_mixup(self) -> Mixup | None:
        """timm's Mixup/CutMix over `label_width` classes, label smoothing 0 (the search's loss
        smooths once itself); None when both alphas are 0."""
        a = self.augment
        if not a.mixes:
            return None
        return Mixup(mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha, prob=a.mixup_prob,
                     switch_prob=a.mixup_switch_prob, label_smoothing=0.0,
                     num_classes=self.label_width)

    def _check_space(self, space) -> None:
        shape = self.input_shape
        want = (space.input_channels, space.input_size, space.input_size)
        if shape != want:
            raise ValueError(
                f"images reach the network as {'x'.join(map(str, shape))} but space "
                f"{space.name!r} takes {'x'.join(map(str, want))}; set the data module's "
                f"channels: {want[0]} and image_size: {want[1]}")

    def transforms(self):
        """(train, eval) transforms for this module's channels, size and augmentation."""
        return build_transforms(self.channels, self.size, resize=self.image_size is not None,
                                mean=self.mean, std=self.std, crop_pct=self.crop_pct,
                                interpolation=self.interpolation, augment=self.augment)

    # -- what the search reads ------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        if self.size is None:
            raise RuntimeError("input_shape is unknown until setup() read the images "
                               "(or image_size is given)")
        return (self.channels, self.size, self.size)

    @property
    def num_classes(self) -> int:
        if self._num_classes:
            return self._num_classes
        if self.classes is None:
            raise RuntimeError("num_classes is unknown until setup() read the dataset")
        return len(self.classes)

    def test_dataloader(self):
        if self.datasets and "test" not in self.datasets:
            raise ValueError(f"no test split: add {self.root}/test/<class>/<image> (the same "
                             "class folders as train/)")
        return super().test_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Mixup/CutMix the weight step's `train` batch only (soft targets); never the α step's
        `search` batch or any evaluation batch."""
        trainer = self.trainer
        if self.mixup is not None and trainer is not None and trainer.training and (
                isinstance(batch, dict) and "train" in batch):
            batch = {**batch, "train": self.mixup(*batch["train"])}
        return batch
