"""Loading files that may come from elsewhere: tensors only, and a clear error when damaged."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

# what torch.load raises on a truncated, tampered or foreign file
LOAD_ERRORS = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile)


class CorruptFileError(ValueError):
    """A checkpoint that is missing, truncated, tampered with or not of the expected kind."""


def explain(path: str | Path, what: str, fix: str, error: Exception) -> CorruptFileError:
    """One line: the file, why it failed (torch's first sentence, never its advice to load
    with ``weights_only=False``: a file that failed the safe load is not to be trusted), the fix."""
    text = " ".join(str(error).split())
    reason = text.split(". ")[0].rstrip(".") if text else type(error).__name__
    if "weights_only" in reason:
        reason = "not a plain tensor file: it needs code to load"
    return CorruptFileError(f"{path}: cannot read this {what} ({reason}); it is truncated, "
                            f"tampered with or not a {what}; {fix}")


def load_untrusted(path: str | Path, what: str, fix: str,
                   map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)``: no code from the file runs; damage is explained.

    ``what`` names the file kind ("search checkpoint") and ``fix`` says how to get a good one.
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{what} {str(path)!r} does not exist; {fix}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except LOAD_ERRORS as e:
        raise explain(path, what, fix, e) from None
