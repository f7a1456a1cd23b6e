"""Checks a dataset must pass before a search trains on it; each failure is one ValueError line
naming the problem and the fix, raised from the data module's `setup()`."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

SIZE_SAMPLE = 256  # items decoded to check sizes when a dataset has no file list


def dataset_labels(dataset: Dataset) -> Tensor:
    """Every item's label as a long tensor: from `targets`/`labels` when the dataset keeps them
    (ImageFolder, CIFAR, MNIST, SVHN), else by reading each item (decodes every image)."""
    for attr in ("targets", "labels", "_labels"):
        values = getattr(dataset, attr, None)
        if values is not None and len(values) == len(dataset):
            break
    else:
        values = [dataset[i][1] for i in range(len(dataset))]
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be one integer class index per image, got dtype "
                         f"{array.dtype} and shape {array.shape}; map them to 0..C-1")
    return torch.as_tensor(array, dtype=torch.long)


def _name(label: int, classes: Sequence[str] | None) -> str:
    return f"{classes[label]!r} (label {label})" if classes and 0 <= label < len(classes) else (
        f"label {label}")


def check_label_range(labels: Tensor, num_classes: int, split: str,
                      classes: Sequence[str] | None, source: str = "num_classes") -> None:
    """Labels must index the network's outputs: 0 <= label < num_classes."""
    if len(labels) == 0:
        raise ValueError(f"the {split} set has no images")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{split} labels run {lo}..{hi} but {source} is {num_classes} (labels "
            f"0..{num_classes - 1}): {_name(bad, classes)} is out of range; raise {source} to "
            f"{hi + 1} or relabel the data to 0..{num_classes - 1}")


def check_class_folders(train: Sequence[str] | None, test: Sequence[str] | None) -> None:
    """A test folder must hold the same class folders as train (labels are folder order)."""
    if train is None or test is None or list(train) == list(test):
        return
    only_train = sorted(set(train) - set(test))
    only_test = sorted(set(test) - set(train))
    which = (f"class {only_train[0]!r} is in train/ but not in test/" if only_train else
             f"class {only_test[0]!r} is in test/ but not in train/")
    raise ValueError(f"{which}; train/ and test/ need the same class folders "
                     f"(train has {len(train)}, test has {len(test)})")


def check_class_coverage(labels: Mapping[str, Tensor], classes: Sequence[str] | None) -> None:
    """Every class seen in any split must be in every split (train, search, val, test)."""
    counts = {s: torch.bincount(y, minlength=1) for s, y in labels.items()}
    width = max(len(c) for c in counts.values())
    counts = {s: torch.nn.functional.pad(c, (0, width - len(c))) for s, c in counts.items()}
    present = sum(c > 0 for c in counts.values())
    for label in range(width):
        if 0 < int(present[label]) < len(counts):
            where = ", ".join(f"{int(c[label])} in {s}" for s, c in counts.items())
            missing = next(s for s, c in counts.items() if c[label] == 0)
            raise ValueError(
                f"class {_name(label, classes)} has no images in the {missing} split ({where}); "
                f"every class needs images in every split: add images of it, or remove it")


def _size(image) -> tuple[int, int]:
    return image.size if isinstance(image, Image.Image) else tuple(image.shape[-1:-3:-1])


def image_sizes(dataset: Dataset):
    """(width, height) and where from: every file's header when the dataset lists its files
    (ImageFolder: `samples`), else a seeded sample of decoded items."""
    samples = getattr(dataset, "samples", None)
    if samples is not None and len(samples) == len(dataset):
        for path, _ in samples:
            with Image.open(path) as image:  # reads the header only
                yield image.size, str(path)
        return
    n = len(dataset)
    for i in sorted(random.Random(0).sample(range(n), min(n, SIZE_SAMPLE))):
        yield _size(dataset[i][0]), f"item {i}"


def check_one_size(datasets: Sequence[Dataset]) -> int:
    """Without a resize, every image must have one square size; returns it (pixels)."""
    first = None
    for dataset in datasets:
        for size, where in image_sizes(dataset):
            if first is None:
                first = (size, where)
            elif size != first[0]:
                (w0, h0), where0 = first
                raise ValueError(
                    f"images have mixed sizes ({w0}x{h0} in {where0}, {size[0]}x{size[1]} in "
                    f"{where}) and image_size is not set; set image_size to resize them")
    if first is None:
        raise ValueError("the dataset has no images")
    (w, h), where = first
    if w != h:
        raise ValueError(f"images are {w}x{h} (WxH, e.g. {where}) but the network takes square "
                         "inputs; set image_size to resize and centre-crop them")
    return w
