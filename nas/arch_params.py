"""Architecture parameters α: one logit vector per search-space decision.

The relaxations are the field's usual ones — ``softmax`` (DARTS), ``gumbel`` soft samples and
``gumbel_hard`` straight-through one-hot samples (FBNet, GDAS), and ``binary`` gates (a one-hot
sample from softmax(α) with a straight-through gradient, ProxylessNAS).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from supernet import ArchConfig, SearchSpace

Relaxation = Literal["softmax", "gumbel", "gumbel_hard", "binary"]
RELAXATIONS = ("softmax", "gumbel", "gumbel_hard", "binary")


def _param_name(key: str) -> str:
    return key.replace(".", "__")  # ParameterDict names may not contain dots


class ArchParameters(nn.Module):
    """α per decision, initialised uniform (zeros) so the search starts without a bias."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        self.alpha = nn.ParameterDict({
            _param_name(d.key): nn.Parameter(torch.zeros(len(d.choices)))
            for d in space.decisions
        })

    def logits(self, key: str) -> torch.Tensor:
        return self.alpha[_param_name(key)]

    def probs(self, tau: float = 1.0) -> dict[str, torch.Tensor]:
        """softmax(α/τ) per decision — the distribution the search currently believes in;
        τ < 1 sharpens it toward the argmax member."""
        return {d.key: F.softmax(self.logits(d.key) / tau, -1) for d in self.space.decisions}

    def distribution(self, relaxation: Relaxation = "softmax", tau: float = 1.0,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Probabilities per decision under ``relaxation`` at temperature ``tau``.

        Pass a ``generator`` seeded identically on every rank so all ranks draw the same sample.
        """
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation: must be one of {RELAXATIONS}, got {relaxation!r}")
        if tau <= 0:
            raise ValueError(f"tau: the temperature must be positive, got {tau}")
        if relaxation == "softmax":
            return self.probs(tau)
        out = {}
        for d in self.space.decisions:
            a = self.logits(d.key)
            if relaxation == "binary":
                soft = F.softmax(a, -1)
                idx = torch.multinomial(soft.detach().cpu(), 1, generator=generator).item()
            else:
                u = torch.rand(a.shape, generator=generator).clamp(1e-9, 1 - 1e-9).to(a)
                soft = F.softmax((a - torch.log(-torch.log(u))) / tau, -1)
                if relaxation == "gumbel":
                    out[d.key] = soft
                    continue
                idx = int(soft.detach().argmax())
            hard = F.one_hot(torch.tensor(idx), len(d.choices)).to(soft)
            out[d.key] = hard - soft.detach() + soft  # straight-through
        return out

    def argmax(self) -> ArchConfig:
        """The most likely choice of every decision."""
        return ArchConfig(tuple(
            (d.key, d.choices[int(self.logits(d.key).argmax())]) for d in self.space.decisions
        ))

    def sample(self, generator: torch.Generator) -> ArchConfig:
        """A concrete config drawn from softmax(α) (the sandwich rule's random members)."""
        return ArchConfig(tuple(
            (d.key, d.choices[int(torch.multinomial(p.detach().cpu(), 1, generator=generator))])
            for d, p in zip(self.space.decisions, self.probs().values(), strict=True)
        ))

    def entropies(self) -> dict[str, torch.Tensor]:
        """Normalised entropy of softmax(α) per decision, in [0, 1] (1 = undecided, 0 =
        settled); differentiable, so the search can penalise indecision."""
        out = {}
        for d, p in zip(self.space.decisions, self.probs().values(), strict=True):
            if len(d.choices) > 1:
                out[d.key] = -(p * p.clamp_min(1e-12).log()).sum() / math.log(len(d.choices))
        return out

    @torch.no_grad()
    def entropy(self) -> dict[str, float]:
        """`entropies` as floats, for logging."""
        return {k: float(h) for k, h in self.entropies().items()}
