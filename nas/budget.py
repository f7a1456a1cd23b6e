"""Budget losses on the expected cost E[cost] of the architecture distribution.

- ``hinge``: ``λ·max(0, E/B − 1)`` — no pressure once under budget.
- ``fbnet``: FBNet's multiplicative form ``CE·α·log(E)^β``, here on the budget-normalised cost
  ``log₂(1 + E/B)`` so it is defined for any unit and equals ``CE·α`` on budget.
- ``lagrangian``: ``λ·(E/B − 1) + ρ/2·(E/B − 1)²`` with λ updated by dual ascent after every
  α step, ``λ ← max(0, λ + η(C/B − 1))``: λ grows while over budget and shrinks while under, a
  feedback controller that lands the cost C on the budget without hand-tuning λ. C is E[cost]
  by default, or the argmax member's table cost (the architecture that ships). The quadratic
  term (the augmented Lagrangian) damps the controller: with Adam on α, λ alone overshoots into
  a limit cycle of ±50% around the budget; with ρ > 0 E[cost] settles within a few percent.
  Without ``equality`` it acts only above the budget, ``ρ/2·max(0, E/B − 1)²``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from costmodels import ExpectedCost
from supernet import ArchConfig, SearchSpace

LossKind = Literal["lagrangian", "hinge", "fbnet"]


@dataclass
class BudgetSpec:
    """One budget: a cost-table metric and its limit.

    ``target`` is the budget in the metric's units (ms, mJ, bytes…); when it is not given,
    ``fraction`` of the largest member's table cost is. ``weight`` is λ for hinge, the initial λ
    for the Lagrangian, and α for FBNet; ``dual_lr`` is the Lagrangian's η and ``rho`` its
    quadratic weight ρ; ``beta`` is FBNet's exponent. ``dual_signal``
    is what the multiplier controls: the cost of the ``argmax`` member (what gets deployed)
    or the ``expected`` cost under softmax(α). With ``equality`` the budget is a target rather
    than a ceiling: λ may turn negative and push the cost up when it falls under the budget.
    """

    metric: str = "latency_ms"
    target: float | None = None
    fraction: float | None = 0.5
    loss: LossKind = "lagrangian"
    weight: float = 1.0
    dual_lr: float = 0.5
    rho: float = 5.0
    beta: float = 0.6
    dual_signal: Literal["argmax", "expected"] = "expected"
    equality: bool = False


class BudgetLoss(nn.Module):
    """The penalty of one budget; ``lam`` is a buffer so it is checkpointed and rank-identical."""

    def __init__(self, spec: BudgetSpec, space: SearchSpace, expected: ExpectedCost):
        super().__init__()
        if spec.loss not in ("lagrangian", "hinge", "fbnet"):
            raise ValueError(f"budget.loss: must be lagrangian, hinge or fbnet, got {spec.loss!r}")
        if not spec.rho >= 0:
            raise ValueError(f"budget.rho: the quadratic weight must be >= 0, got {spec.rho}")
        self.spec, self.expected = spec, expected
        self.smallest_cost = expected.concrete(cheapest_config(space, expected.concrete))
        self.largest_cost = expected.concrete(space.largest())
        self.budget = resolve_target(spec, self.smallest_cost, self.largest_cost)
        self.register_buffer("lam", torch.tensor(float(spec.weight), dtype=torch.float64))

    @property
    def name(self) -> str:
        return self.spec.metric

    def ratio(self, probs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[cost], E[cost] / budget), both differentiable in ``probs``."""
        cost = self.expected(probs)
        return cost, cost / self.budget

    def penalty(self, task_loss: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """The term added to the architecture loss."""
        r = ratio.to(task_loss.dtype)
        if self.spec.loss == "hinge":
            return self.lam.to(r) * torch.relu(r - 1)
        if self.spec.loss == "lagrangian":
            excess = r - 1 if self.spec.equality else torch.relu(r - 1)
            return self.lam.to(r) * (r - 1) + self.spec.rho / 2 * excess**2
        factor = self.spec.weight * torch.log2(1 + r) ** self.spec.beta
        return task_loss * (factor - 1)  # task + this = CE·α·log(E)^β

    @torch.no_grad()
    def dual_update(self, ratio: torch.Tensor, apply: torch.Tensor | None = None) -> None:
        """Dual ascent on λ (Lagrangian only); pass the ratio all-reduced over ranks. With
        ``apply`` (a bool tensor) λ moves only where it is True — decided on the device, so a
        step never waits for the host."""
        if self.spec.loss == "lagrangian":
            lam = self.lam + self.spec.dual_lr * (torch.as_tensor(ratio).to(self.lam) - 1)
            lam = lam if self.spec.equality else lam.clamp_min(0.0)
            self.lam.copy_(lam if apply is None else torch.where(apply, lam, self.lam))


def cheapest_config(space: SearchSpace, cost) -> ArchConfig:
    """The cheapest member by coordinate descent from `smallest()`: on a real target the
    smallest choices are not always cheapest (a CPU runs float activations faster than
    fake-quantized ones), and each decision's cheapest choice is found with the others fixed."""
    arch = space.smallest()
    for d in space.decisions:
        arch = min((ArchConfig.from_dict({**arch.to_dict(), d.key: c}) for c in d.choices),
                   key=cost)
    return arch


def resolve_target(spec: BudgetSpec, smallest: float, largest: float) -> float:
    """The budget in metric units; infeasible budgets fail here, before any training."""
    if spec.target is None and spec.fraction is None:
        raise ValueError(f"budget for {spec.metric}: give a target (in the metric's units) or a "
                         f"fraction (of the largest member's cost); both are null")
    budget = spec.target if spec.target is not None else spec.fraction * largest
    if not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget for {spec.metric}: must be positive, got {budget}")
    if budget < smallest:
        raise ValueError(
            f"budget for {spec.metric} is infeasible: {budget:.6g} is below the cheapest "
            f"member's cost {smallest:.6g} (the largest costs {largest:.6g}); raise the budget "
            f"or shrink the space")
    if budget >= largest:
        warnings.warn(
            f"budget for {spec.metric} ({budget:.6g}) is at or above the largest member's cost "
            f"{largest:.6g} (smallest {smallest:.6g}): it will not constrain the search",
            stacklevel=2)
    how = "target" if spec.target is not None else f"{spec.fraction:.0%} of the largest member"
    rank_zero_info(f"budget {spec.metric} <= {budget:.6g} ({how}; members cost {smallest:.6g} to "
                   f"{largest:.6g}), {spec.loss} loss")
    return float(budget)
