"""The search: data, losses, the Lightning module, family extraction and export.

Public names load on first use, so `hwnas --help` does not pay for importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "SplitDataModule": "nas.data.splits",
    "FashionMNISTDataModule": "nas.data.splits",
    "SyntheticDataModule": "nas.data.splits",
    "find_fashion_mnist": "nas.data.splits",
}

__all__ = [
    "FashionMNISTDataModule",
    "SplitDataModule",
    "SyntheticDataModule",
    "find_fashion_mnist",
]

if TYPE_CHECKING:
    from nas.data.splits import (
        FashionMNISTDataModule,
        SplitDataModule,
        SyntheticDataModule,
        find_fashion_mnist,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
