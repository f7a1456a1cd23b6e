"""`Mix`: a relaxed choice — probabilities over a decision's ordered values.

Every elastic op takes either a concrete value (slice the weights: smaller tensors, real speed)
or a `Mix` (run at full size and weigh by the probabilities, so gradients reach them).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from supernet.arch import Number


@dataclass(frozen=True)
class Mix:
    """Probabilities ``probs[i]`` of choosing ``values[i]``.

    ``derived`` caches what layers compute from the probabilities alone (channel and kernel
    masks, joint mixes), so each is computed once per pass, however many layers use it.
    """

    probs: torch.Tensor
    values: tuple[Number, ...]
    derived: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def cached(self, key: tuple, compute: Callable[[], object]):
        """``compute()`` the first time ``key`` is asked for, the stored result afterwards."""
        if key not in self.derived:
            self.derived[key] = compute()
        return self.derived[key]


Choice = Number | Mix


def combine(a: Choice, b: Choice, fn: Callable[[Number, Number], Number]) -> Choice:
    """``fn(a, b)`` for concrete values; for mixes, the joint `Mix` (independent decisions)."""
    if not isinstance(a, Mix) and not isinstance(b, Mix):
        return fn(a, b)
    like = (a if isinstance(a, Mix) else b).probs
    a, b = as_mix(a, like), as_mix(b, like)
    probs = torch.outer(a.probs, b.probs).flatten()
    values = tuple(fn(x, y) for x, y in itertools.product(a.values, b.values))
    return Mix(probs, values)


def as_mix(c: Choice, like: torch.Tensor) -> Mix:
    """A concrete value as a certain `Mix` (on ``like``'s device and dtype)."""
    return c if isinstance(c, Mix) else Mix(torch.ones(1).to(like), (c,))


def choice_masks(kind: str, values: tuple[Number, ...], size: int, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """Constant 0/1 masks, one row per value: ``prefix`` — the first ``v`` of ``size``
    channels; ``window`` — the centred ``v``×``v`` window of a ``size``×``size`` kernel.

    Cached in eager mode; inside a `torch.compile` trace they are built in the graph (constants
    there), as the compiler would otherwise warn that it ignores the cache."""
    if torch.compiler.is_compiling():
        return _build_masks(kind, values, size, device, dtype)
    return _cached_masks(kind, values, size, device, dtype)


def _build_masks(kind: str, values: tuple[Number, ...], size: int, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    idx = torch.arange(size)
    if kind == "prefix":
        rows = [idx < int(v) for v in values]
    else:
        rows = []
        for k in values:
            lo = (size - int(k)) // 2
            inside = (idx >= lo) & (idx < lo + int(k))
            rows.append((inside[:, None] & inside[None, :]).flatten())
    return torch.stack(rows).to(device=device, dtype=dtype)


_cached_masks = functools.lru_cache(maxsize=512)(_build_masks)


def prefix_mask(width: Mix, size: int) -> torch.Tensor:
    """Expected channel mask ``m[c] = P(width > c)`` over ``size`` channels (FBNetV2-style)."""
    p = width.probs
    return width.cached(("prefix", size), lambda: p @ choice_masks(
        "prefix", tuple(width.values), size, p.device, p.dtype))


def width_of(c: Choice, size: int) -> int:
    """How many channels a layer computes: the concrete width, or all ``size`` for a mix."""
    return size if isinstance(c, Mix) else int(c)


def width_mask(width: Choice, size: int) -> torch.Tensor | None:
    """The expected channel mask of a mixed width over ``size`` channels; None for a concrete
    width (sliced, not masked)."""
    return prefix_mask(width, size) if isinstance(width, Mix) else None


def apply_width(x: torch.Tensor, width: Choice) -> torch.Tensor:
    """Mask channels of a full-width activation by a mixed width; concrete widths are sliced."""
    mask = width_mask(width, x.shape[1])
    return x if mask is None else x * mask.view(1, -1, *([1] * (x.dim() - 2)))


def mix_outputs(choice: Mix, outputs: list[torch.Tensor]) -> torch.Tensor:
    """Probability-weighted sum of one output per choice."""
    total = choice.probs[0] * outputs[0]
    for p, y in zip(choice.probs[1:], outputs[1:], strict=True):
        total = total + p * y
    return total
