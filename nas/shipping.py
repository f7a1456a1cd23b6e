"""The member that ships: α's most likely config that meets every budget.

The search's argmax can end a few percent over a ceiling or well under it (the table's cost
steps are coarse where α is undecided). The shipped member is therefore an explicit projection:
among configs near the argmax, the one with the highest log-probability under softmax(α) that
meets every budget, preferring, for the first budget, a cost inside its band — [0.98, 1.00]×B
for a ceiling, ±2% for an equality target. A beam search over one-decision changes finds it;
it never returns a config over a ceiling when one under it exists (the cheapest config is
a start of the search).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from nas.budget import cheapest_config
from supernet import ArchConfig, SearchSpace

BAND = 0.02  # relative width of the band a shipped cost should land in


@dataclass(frozen=True)
class Budget:
    """A budget as the projection sees it: a cost function, its limit, and its kind."""

    metric: str
    cost: Callable[[ArchConfig], float]
    limit: float
    equality: bool = False

    def ratio(self, arch: ArchConfig) -> float:
        return self.cost(arch) / self.limit

    def violation(self, arch: ArchConfig) -> float:
        """How far outside what is allowed (0 when allowed): above a ceiling, or outside the
        ±2% band of a target."""
        r = self.ratio(arch)
        return max(0.0, abs(r - 1) - BAND) if self.equality else max(0.0, r - 1)

    def shortfall(self, arch: ArchConfig) -> float:
        """How far under the band a ceiling's cost is (0 inside it)."""
        return 0.0 if self.equality else max(0.0, 1 - BAND - self.ratio(arch))


def argmax_config(space: SearchSpace, probs: Mapping[str, torch.Tensor]) -> ArchConfig:
    """α's most likely config: each decision's most probable choice."""
    return ArchConfig(tuple((d.key, d.choices[int(probs[d.key].argmax())])
                            for d in space.decisions))


def log_probs_of(probs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per decision, the log of its choice probabilities (float64, zeros floored at 1e-30)."""
    return {k: p.detach().double().clamp_min(1e-30).log() for k, p in probs.items()}


def log_prob(log_probs: Mapping[str, torch.Tensor], space: SearchSpace, arch: ArchConfig) -> float:
    return sum(float(log_probs[d.key][d.choices.index(arch[d.key])]) for d in space.decisions)


def neighbours(space: SearchSpace, arch: ArchConfig):
    """Every config that differs from ``arch`` in one decision."""
    values = arch.to_dict()
    for d in space.decisions:
        for c in d.choices:
            if c != values[d.key]:
                yield ArchConfig.from_dict({**values, d.key: c})


@dataclass(frozen=True)
class Box:
    """The configs nested between ``lower`` and ``upper`` (either end open when None): where
    a family member between two others must lie to keep the chain nested."""

    lower: ArchConfig | None = None
    upper: ArchConfig | None = None

    def __contains__(self, arch: ArchConfig) -> bool:
        return ((self.lower is None or self.lower <= arch)
                and (self.upper is None or arch <= self.upper))

    def clip(self, arch: ArchConfig) -> ArchConfig:
        """``arch`` with each decision moved into [lower, upper] (choices are ordered)."""
        values = arch.to_dict()
        if self.lower is not None:
            values = {k: max(v, self.lower[k]) for k, v in values.items()}
        if self.upper is not None:
            values = {k: min(v, self.upper[k]) for k, v in values.items()}
        return ArchConfig.from_dict(values)


def project(space: SearchSpace, probs: Mapping[str, torch.Tensor], budgets: Sequence[Budget],
            start: ArchConfig, extra_starts: Sequence[ArchConfig] = (), beam: int = 8,
            patience: int = 4, box: Box = Box()) -> ArchConfig:
    """The config to ship: lexicographically, the least budget violation, then (first budget)
    the least shortfall under its band, then the highest log-probability under ``probs``.
    The beam starts from ``start`` (α's argmax) and ``extra_starts`` (e.g. the family path's
    configs on either side of the budget) and never leaves ``box``."""
    log_probs = log_probs_of(probs)
    memo: dict[ArchConfig, tuple[float, float, float]] = {}

    def score(arch: ArchConfig) -> tuple[float, float, float]:
        if arch not in memo:
            memo[arch] = (sum(b.violation(arch) for b in budgets),
                          budgets[0].shortfall(arch) if budgets else 0.0,
                          -log_prob(log_probs, space, arch))
        return memo[arch]

    frontier = list(dict.fromkeys(box.clip(a) for a in [start, *extra_starts]))
    best, stale = min(frontier, key=lambda a: (score(a), a.items_)), 0
    while stale < patience:  # stop after `patience` rounds that found nothing better
        seen = set(memo)
        candidates = {n for a in frontier for n in neighbours(space, a)
                      if n not in seen and n in box}
        if not candidates:
            break
        # explore by distance to the band from either side; keep the best by feasibility first
        frontier = sorted(candidates, key=lambda a: (score(a)[0] + score(a)[1], score(a)[2],
                                                     a.items_))
        frontier = frontier[:beam]
        improved = min(frontier, key=lambda a: (score(a), a.items_))
        if score(improved) < score(best):
            best, stale = improved, 0
        else:
            stale += 1
    return best


def ship(space: SearchSpace, probs: Mapping[str, torch.Tensor], budgets: Sequence[Budget],
         samples: int = 256, seed: int = 0, box: Box = Box(),
         starts: Sequence[ArchConfig] = ()) -> ArchConfig:
    """`project` from α's argmax and from the configs nearest the band among ``samples``
    drawn half from softmax(α), half uniformly (a seeded draw: the same α ships the same
    member) and from ``starts``, all clipped into ``box``. Local moves alone stall between the
    table's cost steps; these starts spread over the cost range."""
    start = box.clip(argmax_config(space, probs))
    if not budgets:
        return start
    gen = torch.Generator().manual_seed(seed)
    alpha = {k: p.detach().double().cpu() for k, p in probs.items()}
    uniform = {d.key: torch.ones(len(d.choices), dtype=torch.float64) for d in space.decisions}

    def draw(weights: Mapping[str, torch.Tensor]) -> ArchConfig:
        return ArchConfig(tuple(
            (d.key, d.choices[int(torch.multinomial(weights[d.key], 1, generator=gen))])
            for d in space.decisions))

    drawn = [box.clip(draw(alpha if i % 2 else uniform)) for i in range(samples)]
    first = budgets[0]
    nearest = sorted(set(drawn), key=lambda a: (first.violation(a) + first.shortfall(a), a.items_))
    # the cheapest config of each budget: a start that meets the ceiling whenever one can
    cheapest = [cheapest_config(space, b.cost) for b in budgets]
    return project(space, probs, budgets, start, [*nearest[:8], *cheapest, *starts], box=box)


def describe(budgets: Sequence[Budget], arch: ArchConfig) -> str:
    """``"latency_ms 3.31 / 3.36 (0.985x, ceiling)"`` for each budget, joined by ``"; "``."""
    parts = []
    for b in budgets:
        kind = "target" if b.equality else "ceiling"
        cost = b.cost(arch)
        parts.append(f"{b.metric} {cost:.4g} / {b.limit:.4g} ({cost / b.limit:.3f}x, {kind})")
    return "; ".join(parts) if parts else "no budget"


def within(budgets: Sequence[Budget], arch: ArchConfig) -> bool:
    """Every budget met (ceilings not exceeded, targets within ±2%)."""
    return all(math.isclose(b.violation(arch), 0.0, abs_tol=1e-12) for b in budgets)
