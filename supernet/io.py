"""Files: loading ones that may come from elsewhere (tensors only, a clear error when damaged)
and writing ones that a crash must never leave half-written (a temporary sibling, then a rename).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
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


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file through ``write(tmp)`` into a temporary sibling, then rename it over
    ``path``: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to fill; on success it replaces ``out`` by renames
    (the old directory, if any, is moved aside first, then removed); on failure it is deleted."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file; give a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o777 & ~_umask())
    old = tmp.with_suffix(".old") if out.exists() else None
    if old is not None:
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
