"""`Mix`: a relaxed choice — probabilities over a decision's ordered values.

Every elastic op takes either a concrete value (slice the weights: smaller tensors, real speed)
or a `Mix` (run at full size and weigh by the probabilities, so gradients reach them).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from supernet.arch import Number


@dataclass(frozen=True)
class Mix:
    """Probabilities ``probs[i]`` of choosing ``values[i]``."""

    probs: torch.Tensor
    values: tuple[Number, ...]


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


def prefix_mask(width: Mix, size: int) -> torch.Tensor:
    """Expected channel mask ``m[c] = P(width > c)`` over ``size`` channels (FBNetV2-style)."""
    masks = torch.stack([
        (torch.arange(size, device=width.probs.device) < w).to(width.probs.dtype)
        for w in width.values
    ])
    return width.probs @ masks


def width_of(c: Choice, size: int) -> int:
    """How many channels a layer computes: the concrete width, or all ``size`` for a mix."""
    return size if isinstance(c, Mix) else int(c)


def apply_width(x: torch.Tensor, width: Choice) -> torch.Tensor:
    """Mask channels of a full-width activation by a mixed width; concrete widths are sliced."""
    if not isinstance(width, Mix):
        return x
    return x * prefix_mask(width, x.shape[1]).view(1, -1, *([1] * (x.dim() - 2)))


def mix_outputs(choice: Mix, outputs: list[torch.Tensor]) -> torch.Tensor:
    """Probability-weighted sum of one output per choice."""
    return sum(p * y for p, y in zip(choice.probs, outputs, strict=True))
