"""Checkpoint I/O for the search: never write non-finite weights, never run code when loading.

Lightning already writes local checkpoints atomically (temp file, then rename); this adds the
two guarantees a long search on shared machines needs.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from supernet.io import CorruptFileError, load_untrusted

FIX = "resume from another checkpoint (e.g. an earlier epoch's) or start the search again"


class SafeCheckpointIO(TorchCheckpointIO):
    """Refuses to save NaN/Inf weights (the last good checkpoint stays the latest) and loads
    with ``weights_only=True``, turning a damaged file into one clear error."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        bad = [name for name, t in checkpoint.get("state_dict", {}).items()
               if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise FloatingPointError(
                f"refusing to write checkpoint {path}: non-finite values in {bad[:3]}"
                f"{' …' if len(bad) > 3 else ''}; the previous checkpoint is the last good one")
        super().save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        # also reads Lightning's own temporary files (ddp_spawn's weights): no content checks
        return load_untrusted(path, "search checkpoint", FIX, map_location=map_location or "cpu")


def check_search_checkpoint(checkpoint: Any, path, fix: str = FIX) -> dict[str, Any]:
    """Refuse, with one clear error, a file that loads but holds no search (another tool's
    checkpoint, a bare state dict)."""
    missing = [key for key in ("state_dict", "hyper_parameters", "hwnas")
               if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CorruptFileError(f"{path}: not a search checkpoint (it has no {', '.join(missing)});"
                               f" {fix}")
    return checkpoint


def read_search_checkpoint(path, fix: str = FIX) -> dict[str, Any]:
    """A search checkpoint's contents, loaded safely and checked."""
    return check_search_checkpoint(load_untrusted(path, "search checkpoint", fix), path, fix)
