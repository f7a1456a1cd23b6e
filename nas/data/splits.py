"""Data modules: Fashion-MNIST and a synthetic set, each carved into train / search / val splits.

The architecture step needs batches the weights never trained on (DARTS' held-out split) and the
checkpoint callbacks need a real validation loop, so the training set is split three ways with a
fixed seed; the test set is never part of a split. Data stays as in-memory tensors: per-item PIL
conversion would dominate a small CPU machine. Image folders and torchvision datasets (decoded
and augmented per item) are `nas.data.images`; shards streamed from beyond one disk,
`nas.data.streaming`; both reuse this split.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchvision.datasets import FashionMNIST
from torchvision.datasets.mnist import read_image_file, read_label_file

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SPLITS = ("train", "search", "val")
_TENSOR_ARGS = ["train_images", "train_labels", "test_images", "test_labels"]


class EpochShuffle(Sampler[int]):
    """A shuffle fixed by (seed, epoch) alone, so a resumed run replays the same batches.

    Lightning calls `set_epoch` on samplers at every epoch start (and wraps this one for DDP).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


class SplitDataModule(L.LightningDataModule):
    """Splits a training set into `train` (weight steps), `search` (α steps) and `val`.

    Give the tensors directly (images float [N, C, H, W], labels long [N]) or subclass and
    override `load()`. The split is a fixed-seed permutation, so every rank and every rerun with
    the same `data_seed` sees the same three disjoint index sets (`split_indices`); the
    batches' order follows it too. It is apart from the search's `seed` (which draws members),
    so either can change alone.
    """

    def __init__(
        self,
        train_images: Tensor | None = None,
        train_labels: Tensor | None = None,
        test_images: Tensor | None = None,
        test_labels: Tensor | None = None,
        search_fraction: float = 0.2,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        data_seed: int = 0,
    ) -> None:
        super().__init__()
        _check_fraction("search_fraction", search_fraction)
        _check_fraction("val_fraction", val_fraction)
        if search_fraction + val_fraction >= 1.0:
            raise ValueError(
                f"search_fraction + val_fraction must be < 1 to leave a train split, got "
                f"search_fraction={search_fraction!r} + val_fraction={val_fraction!r}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
        self.save_hyperparameters(ignore=_TENSOR_ARGS)
        self.search_fraction = search_fraction
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.data_seed = data_seed
        self._given = (train_images, train_labels, test_images, test_labels)
        self.pin_memory = False  # in-memory tensors; file-backed subclasses pin for the GPU
        self.datasets: dict[str, TensorDataset] = {}
        self.split_indices: dict[str, Tensor] = {}

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return (train_images, train_labels, test_images, test_labels); subclasses read files."""
        if any(t is None for t in self._given):
            raise ValueError(
                "SplitDataModule needs train_images, train_labels, test_images and test_labels, "
                "or a subclass that overrides load()"
            )
        return self._given  # type: ignore[return-value]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        images = self.datasets["train"].tensors[0] if self.datasets else self._given[0]
        if images is None:
            raise RuntimeError("input_shape is unknown until the data is given or setup() ran")
        return tuple(images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        labels = self._given[1]
        if labels is None:
            raise RuntimeError("num_classes is unknown until the data is given")
        return int(labels.max()) + 1

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        train_x, train_y, test_x, test_y = self.load()
        for name, images, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
            if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
                raise ValueError(
                    f"{name} data must be images [N, C, H, W] and labels [N], got "
                    f"{tuple(images.shape)} and {tuple(labels.shape)}"
                )
        self.carve(len(train_x))
        self.datasets = {
            split: TensorDataset(train_x[idx], train_y[idx])
            for split, idx in self.split_indices.items()
        }
        self.datasets["test"] = TensorDataset(test_x, test_y)

    def carve(self, n: int) -> dict[str, Tensor]:
        """Set `split_indices`: a permutation of range(n) seeded by `data_seed` alone (so every
        rank and rerun agrees), cut into search, val and train; train and search must each hold
        a batch."""
        n_search = round(n * self.search_fraction)
        n_val = round(n * self.val_fraction)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.data_seed))
        self.split_indices = {
            "search": perm[:n_search],
            "val": perm[n_search : n_search + n_val],
            "train": perm[n_search + n_val :],
        }
        for split in ("train", "search"):
            size = len(self.split_indices[split])
            if size < self.batch_size:
                raise ValueError(
                    f"the {split} split has {size} samples, fewer than batch_size="
                    f"{self.batch_size}; lower batch_size or use more data"
                )
        return self.split_indices

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} loader")
        dataset = self.datasets[split]
        seed = self.data_seed * 1_009 + (SPLITS.index(split) if split in SPLITS else 0)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(dataset), seed) if shuffle else None,
            drop_last=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def weights_dataloader(self) -> DataLoader:
        """Batches for the weight step (the `train` split)."""
        return self._loader("train", shuffle=True)

    def search_dataloader(self) -> DataLoader:
        """Held-out batches for the architecture (α) step."""
        return self._loader("search", shuffle=True)

    def train_dataloader(self) -> CombinedLoader:
        """Both step kinds per iteration; the shorter search loader cycles."""
        loaders = {"train": self.weights_dataloader(), "search": self.search_dataloader()}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _idx_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path:
    """The directory holding the four IDX files (plain or .gz); never downloads."""
    if data_dir is None:
        candidates = [DEBIAN_FASHION_MNIST_DIR]
    else:
        root = Path(data_dir).expanduser()
        candidates = [root / "FashionMNIST" / "raw", root]
    for directory in candidates:
        if all(_idx_file(directory, name) for name in IDX_FILES):
            return directory
    tried = ", ".join(str(d) for d in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST not found: looked for {', '.join(IDX_FILES)} (plain or .gz) in {tried}. "
        "Install the Debian package (`apt-get install dataset-fashion-mnist`) or pass data_dir "
        "pointing at a torchvision-layout root (<data_dir>/FashionMNIST/raw/)."
    )


def read_fashion_mnist(directory: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Raw uint8 images [N, 28, 28] and long labels, read with torchvision's IDX reader."""
    with tempfile.TemporaryDirectory(prefix="hwnas-fashion-mnist-") as tmp:
        paths = {}
        for name in IDX_FILES:
            path = _idx_file(directory, name)
            assert path is not None  # find_fashion_mnist checked
            if path.suffix == ".gz":  # torchvision's reader takes plain files only
                plain = Path(tmp) / name
                with gzip.open(path, "rb") as src, plain.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                path = plain
            paths[name] = str(path)
        return (
            read_image_file(paths["train-images-idx3-ubyte"]),
            read_label_file(paths["train-labels-idx1-ubyte"]),
            read_image_file(paths["t10k-images-idx3-ubyte"]),
            read_label_file(paths["t10k-labels-idx1-ubyte"]),
        )


def normalize_fashion_mnist(images: Tensor) -> Tensor:
    """uint8 [N, 28, 28] → float32 [N, 1, 28, 28] with the dataset's mean and std."""
    return images.float().div_(255).sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD).unsqueeze_(1)


class FashionMNISTDataModule(SplitDataModule):
    """Fashion-MNIST from local files: a torchvision-layout `data_dir`, or the Debian package's."""

    classes = FashionMNIST.classes

    def __init__(
        self,
        data_dir: str | None = None,
        search_fraction: float = 0.2,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        data_seed: int = 0,
    ) -> None:
        super().__init__(
            search_fraction=search_fraction,
            val_fraction=val_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            data_seed=data_seed,
        )
        self.data_dir = data_dir

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare_data(self) -> None:
        find_fashion_mnist(self.data_dir)  # fail before any process starts training

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        train_x, train_y, test_x, test_y = read_fashion_mnist(find_fashion_mnist(self.data_dir))
        return normalize_fashion_mnist(train_x), train_y, normalize_fashion_mnist(test_x), test_y


class SyntheticDataModule(SplitDataModule):
    """Small, deterministic, learnable images for tests: one smooth random template per class
    plus Gaussian pixel noise of std `noise` (templates have unit std)."""

    def __init__(
        self,
        num_samples: int = 512,
        num_test: int = 128,
        image_size: int = 16,
        channels: int = 1,
        num_classes: int = 4,
        noise: float = 1.0,
        search_fraction: float = 0.2,
        val_fraction: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 0,
        data_seed: int = 0,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        super().__init__(
            search_fraction=search_fraction,
            val_fraction=val_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            data_seed=data_seed,
        )
        self.num_samples = num_samples
        self.num_test = num_test
        self.image_size = image_size
        self.channels = channels
        self._num_classes = num_classes
        self.noise = noise

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.data_seed)
        coarse = min(4, self.image_size)
        templates = torch.randn(self._num_classes, self.channels, coarse, coarse, generator=g)
        size = (self.image_size, self.image_size)
        templates = F.interpolate(templates, size=size, mode="bilinear", align_corners=False)
        flat = templates.flatten(1)
        templates = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)).view_as(
            templates
        )

        def draw(n: int) -> tuple[Tensor, Tensor]:
            labels = (torch.arange(n) % self._num_classes)[torch.randperm(n, generator=g)]
            noise = torch.randn(n, *self.input_shape, generator=g)
            return templates[labels] + self.noise * noise, labels

        return (*draw(self.num_samples), *draw(self.num_test))
