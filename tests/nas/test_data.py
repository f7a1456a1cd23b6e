import gzip
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nas.data.splits as data
from nas.data.splits import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNISTDataModule,
    SplitDataModule,
    SyntheticDataModule,
)

needs_debian_data = pytest.mark.skipif(
    not data.DEBIAN_FASHION_MNIST_DIR.is_dir(),
    reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist",
)


@pytest.fixture(scope="module")
def fashion() -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(batch_size=256)
    dm.setup("fit")
    return dm


def first_batch(loader):
    return next(iter(loader))


@needs_debian_data
def test_fashion_mnist_sizes_shapes_and_classes(fashion):
    sizes = {split: len(ds) for split, ds in fashion.datasets.items()}
    assert sizes["train"] + sizes["search"] + sizes["val"] == 60000
    assert sizes == {"train": 42000, "search": 12000, "val": 6000, "test": 10000}
    assert fashion.input_shape == (1, 28, 28) and fashion.num_classes == 10
    for loader in (
        fashion.weights_dataloader(),
        fashion.val_dataloader(),
        fashion.test_dataloader(),
    ):
        images, labels = first_batch(loader)
        assert images.shape == (256, 1, 28, 28) and images.dtype == torch.float32
        assert labels.dtype == torch.long and 0 <= labels.min() and labels.max() <= 9
    for split in ("train", "search", "val", "test"):
        assert fashion.datasets[split].tensors[1].unique().tolist() == list(range(10))


@needs_debian_data
def test_fashion_mnist_is_normalized(fashion):
    images = fashion.datasets["train"].tensors[0][:4096]
    assert abs(images.mean().item()) < 0.05
    assert abs(images.std().item() - 1.0) < 0.05


@needs_debian_data
def test_split_is_disjoint_covers_the_training_set_and_is_deterministic(fashion):
    idx = fashion.split_indices
    together = torch.cat([idx["train"], idx["search"], idx["val"]])
    assert together.sort().values.equal(torch.arange(60000))  # disjoint and complete

    train_x, train_y = fashion.datasets["train"].tensors  # any tensors will do for the split
    test_x, test_y = fashion.datasets["test"].tensors

    def split(seed: int) -> dict[str, torch.Tensor]:
        dm = SplitDataModule(train_x, train_y, test_x, test_y, data_seed=seed)
        dm.setup()
        return dm.split_indices

    first, again, other = split(0), split(0), split(1)
    assert all(first[s].equal(again[s]) for s in ("train", "search", "val"))
    assert not first["search"].equal(other["search"])


@needs_debian_data
def test_train_dataloader_pairs_train_and_search_batches(fashion):
    loader = fashion.train_dataloader()
    batch, _, _ = first_batch(loader)
    assert len(loader) == len(fashion.weights_dataloader())  # the search loader cycles
    assert set(batch) == {"train", "search"}
    assert batch["search"][0].shape == (256, 1, 28, 28)


def write_idx(path: Path, array: torch.Tensor, compress: bool) -> None:
    """Write uint8 `array` in the IDX format (big-endian header, then raw bytes)."""
    magic = 0x0800 | array.ndim
    payload = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.numpy().tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_torchvision_layout_directory(tmp_path, compress):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    arrays = {
        "train-images-idx3-ubyte": torch.randint(
            0, 256, (40, 28, 28), generator=g, dtype=torch.uint8
        ),
        "train-labels-idx1-ubyte": torch.arange(40, dtype=torch.uint8) % 10,
        "t10k-images-idx3-ubyte": torch.randint(
            0, 256, (10, 28, 28), generator=g, dtype=torch.uint8
        ),
        "t10k-labels-idx1-ubyte": torch.arange(10, dtype=torch.uint8).flip(0),
    }
    for name, array in arrays.items():
        write_idx(raw / name, array, compress)

    dm = FashionMNISTDataModule(data_dir=str(tmp_path), batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    test_x, test_y = dm.datasets["test"].tensors
    assert test_y.tolist() == list(range(9, -1, -1))
    expected = (
        arrays["t10k-images-idx3-ubyte"].float() / 255 - FASHION_MNIST_MEAN
    ) / FASHION_MNIST_STD
    torch.testing.assert_close(test_x, expected.unsqueeze(1))
    assert sum(len(dm.datasets[s]) for s in ("train", "search", "val")) == 40
    images, labels = first_batch(dm.weights_dataloader())
    assert images.shape == (4, 1, 28, 28) and labels.dtype == torch.long


def test_missing_data_names_the_paths_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as excinfo:
        FashionMNISTDataModule(data_dir=str(tmp_path)).setup()
    message = str(excinfo.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message and "data_dir" in message

    missing = tmp_path / "not-installed"
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", missing)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNISTDataModule().prepare_data()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"search_fraction": 0.0}, "search_fraction"),
        ({"search_fraction": 1.5}, "search_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"search_fraction": 0.6, "val_fraction": 0.4}, "search_fraction"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticDataModule(**kwargs)


def test_batch_size_larger_than_a_split_is_an_error():
    with pytest.raises(ValueError, match="batch_size=200"):
        SyntheticDataModule(num_samples=512, batch_size=200).setup()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=20, max_value=300),
    search=st.floats(min_value=0.05, max_value=0.5),
    val=st.floats(min_value=0.05, max_value=0.4),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_split_partitions_any_training_set(n, search, val, seed):
    x, y = torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.long)
    dm = SplitDataModule(
        x, y, x[:3], y[:3], search_fraction=search, val_fraction=val, batch_size=1, data_seed=seed
    )
    dm.setup()
    idx = dm.split_indices
    assert torch.cat(list(idx.values())).sort().values.equal(torch.arange(n))
    assert len(idx["search"]) == round(n * search) and len(idx["val"]) == round(n * val)


def test_synthetic_is_deterministic_and_shaped():
    a, b = SyntheticDataModule(data_seed=3), SyntheticDataModule(data_seed=3)
    a.setup()
    b.setup()
    for split in ("train", "search", "val", "test"):
        for ta, tb in zip(a.datasets[split].tensors, b.datasets[split].tensors, strict=True):
            assert ta.equal(tb)
    assert a.input_shape == (1, 16, 16) and a.num_classes == 4
    assert len(a.datasets["test"]) == 128
    assert a.datasets["train"].tensors[1].bincount().min() > 0


def test_synthetic_is_learnable_by_a_tiny_model():
    torch.manual_seed(0)
    dm = SyntheticDataModule(batch_size=32, data_seed=0)
    dm.setup()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, dm.num_classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps = 0
    while steps < 50:
        for images, labels in dm.weights_dataloader():
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    test_x, test_y = dm.datasets["test"].tensors
    accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy > 0.8  # chance is 0.25
