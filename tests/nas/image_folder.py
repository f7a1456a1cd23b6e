"""Write small image folders at test time: Fashion-MNIST images saved as PNG when the Debian
package is installed, else smooth per-class templates plus noise (still learnable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nas.data import splits as data


def class_images(per_class: int, classes: int, split: str = "train",
                 source: Path | None = None) -> list[np.ndarray]:
    """`classes` uint8 arrays [per_class, 28, 28]: real Fashion-MNIST if found, else synthetic."""
    directory = source or data.DEBIAN_FASHION_MNIST_DIR
    try:
        found = data.find_fashion_mnist(directory if source else None)
    except FileNotFoundError:
        found = None
    if found is not None:
        tx, ty, vx, vy = data.read_fashion_mnist(found)
        x, y = (tx, ty) if split == "train" else (vx, vy)
        return [x[y == c][:per_class].numpy() for c in range(classes)]
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    templates = F.interpolate(torch.rand(classes, 1, 4, 4, generator=g), size=(28, 28),
                              mode="bilinear", align_corners=False)
    out = []
    for c in range(classes):
        noisy = templates[c] + 0.15 * torch.randn(per_class, 28, 28, generator=g)
        out.append((noisy.clamp(0, 1) * 255).to(torch.uint8).numpy())
    return out


def write_image_folder(root: Path, per_class: int = 60, classes: int = 4, test_per_class: int = 10,
                       rgb: bool = False, size: int | None = None,
                       source: Path | None = None) -> Path:
    """<root>/train/c<k>/<i>.png and <root>/test/c<k>/<i>.png; returns root."""
    for split, n in (("train", per_class), ("test", test_per_class)):
        if n == 0:
            continue
        for c, images in enumerate(class_images(n, classes, split, source)):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, array in enumerate(images):
                image = Image.fromarray(array)
                if size is not None:
                    image = image.resize((size, size), Image.BILINEAR)
                if rgb:  # tint per class so colour carries signal too
                    tint = np.array([1.0, 0.6 + 0.1 * c, 1.0 - 0.1 * c])
                    image = Image.fromarray(
                        (np.asarray(image)[..., None] * tint).clip(0, 255).astype(np.uint8))
                image.save(folder / f"{i}.png")
    return root
