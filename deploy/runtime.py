"""Run-time side of an exported family: switch member, exit early.

`FamilyRuntime.load` reads ``family.pt`` (shared supernet weights, member configs and each
member's recalibrated batch-norm statistics) and extracts every member once, so `set_member` is
a reference swap (microseconds, no reload). Per-exit costs stored with each member drive the
early-exit thresholds (`calibrate_thresholds`) and `deploy.BudgetController`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deploy.family_file import (
    EXPORT_FIX,
    FamilyError,
    FamilyFile,
    MemberRecord,
    classifier_keys,
    member_state,
    read_family,
)
from supernet.extract import StaticNet, extract
from supernet.model import SuperNet
from supernet.space import SearchSpace, SpaceError

CRITERIA = ("max_softmax", "entropy")
NEVER = math.inf  # a threshold no confidence (<= 1) passes


@dataclass(frozen=True)
class EarlyExitResult:
    """Per sample: the logits it left with, the index of its exit (0 = shallowest of the
    member's exits), that exit's stage number and the confidence that let it leave."""

    logits: torch.Tensor
    exit_index: torch.Tensor
    exit_stage: torch.Tensor
    confidence: torch.Tensor


@dataclass(frozen=True)
class ThresholdCalibration:
    """Per-exit thresholds (the last always 0) and what they give on the calibration set."""

    thresholds: list[float]
    expected_cost: float
    accuracy: float
    full_accuracy: float  # every sample at the last exit
    exit_fractions: list[float]
    metric: str


def confidence(logits: torch.Tensor, criterion: str = "max_softmax") -> torch.Tensor:
    """Per-sample confidence in [0, 1]: the top softmax probability, or 1 − normalised entropy."""
    p = F.softmax(logits.float(), -1)
    if criterion == "max_softmax":
        return p.amax(-1)
    if criterion == "entropy":
        h = -(p * p.clamp_min(1e-12).log()).sum(-1)
        return 1.0 - h / math.log(logits.shape[-1])
    raise ValueError(f"criterion: must be one of {CRITERIA}, got {criterion!r}")


class FamilyRuntime(nn.Module):
    """The shared supernet and every member pre-extracted from it with its own BN statistics."""

    def __init__(self, net: SuperNet, records: Sequence[MemberRecord], metric: str | None = None):
        super().__init__()
        if not records:
            raise FamilyError("a family needs at least one member")
        space = net.space
        self.net = net.eval()  # the shared weights the members were extracted from
        modules, checked = {}, []
        for rec in records:
            try:
                space.validate(rec.config)
            except SpaceError as e:
                raise FamilyError(f"member {rec.name!r}: {e}") from None
            static = extract(net, rec.config).eval()
            own = set(member_state(static))
            # a version-2 family holds no classifiers: its members keep the shared heads; a
            # fine-tuned member holds every tensor of its network
            odd = sorted((set(rec.state) - set(static.state_dict()))
                         | (own - set(rec.state) - classifier_keys(static)))
            if odd:
                what = "names no tensor of" if odd[0] in rec.state else "is missing for"
                raise FamilyError(f"member {rec.name!r}: its own state {odd[0]!r} {what} "
                                  f"its network; {EXPORT_FIX}")
            try:
                static.load_state_dict(rec.state, strict=False)
            except RuntimeError as e:
                raise FamilyError(f"member {rec.name!r}: its own state does not fit its "
                                  f"network ({str(e).splitlines()[-1].strip()}); "
                                  f"{EXPORT_FIX}") from None
            if rec.exit_stages and tuple(rec.exit_stages) != static.exit_stages:
                raise FamilyError(f"member {rec.name!r}: exits after stages {rec.exit_stages}, "
                                  f"its config has them after {static.exit_stages}; {EXPORT_FIX}")
            modules[rec.name] = static
            checked.append(replace(rec, exit_stages=static.exit_stages))
        records = sorted(checked, key=lambda r: r.costs[metric]) if metric else checked
        self.infos: dict[str, MemberRecord] = {r.name: r for r in records}
        self.member_modules = nn.ModuleDict({r.name: modules[r.name] for r in records})
        self.current = records[-1].name

    @classmethod
    def from_family(cls, family: FamilyFile) -> FamilyRuntime:
        space = SearchSpace(family.space)
        net = SuperNet(space)
        net.load_state_dict(family.state_dict)
        return cls(net, family.members, family.metric)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> FamilyRuntime:
        """Read ``family.pt`` (weights-only) and extract every member on ``map_location``."""
        family = read_family(path, map_location)
        try:
            return cls.from_family(family).to(map_location)
        except FamilyError as e:
            raise FamilyError(f"{path}: {e}") from None
        except (KeyError, TypeError, SpaceError, RuntimeError) as e:
            raise FamilyError(f"{path}: malformed family checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0]}); {EXPORT_FIX}") from None

    # -- switching ----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Member names, cheapest first."""
        return list(self.infos)

    @property
    def info(self) -> MemberRecord:
        return self.infos[self.current]

    @property
    def module(self) -> StaticNet:
        """The current member's extracted network."""
        return self.member_modules[self.current]

    def set_member(self, name: str) -> None:
        """Switch to member ``name``: only a name changes, nothing is copied or loaded."""
        if name not in self.infos:
            raise KeyError(f"no member {name!r} in this family; members are {self.names}")
        self.current = name

    def set_budget(self, **limits: float) -> str:
        """Switch to the largest member whose stored costs meet every limit
        (``latency_ms=1.0``, ``measured_latency_ms=2.0``…); returns its name."""
        for key in limits:
            if any(key not in m.costs for m in self.infos.values()):
                known = sorted(set.intersection(*(set(m.costs) for m in self.infos.values())))
                raise KeyError(f"budget {key!r}: members have no such cost; known: {known}")
        fits = [n for n, m in self.infos.items()
                if all(m.costs[k] <= v for k, v in limits.items())]
        if not fits:
            cheapest = self.infos[self.names[0]]
            raise ValueError(f"no member meets {limits}; the cheapest ({cheapest.name}) costs "
                             f"{ {k: cheapest.costs[k] for k in limits} }")
        self.set_member(fits[-1])
        return fits[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit of the current member, shallowest first."""
        return self.module(x)

    # -- early exits --------------------------------------------------------------------------
    @torch.no_grad()
    def predict_early_exit(self, x: torch.Tensor, thresholds: float | Sequence[float],
                           criterion: str = "max_softmax") -> EarlyExitResult:
        """Run stage by stage; a sample leaves at the first exit whose confidence is at least
        its threshold (the last exit takes the rest). Later stages run on the remaining samples
        only."""
        net, exits = self.module, self.module.exit_stages
        t = _thresholds(thresholds, len(exits))
        n = x.shape[0]
        rows = torch.arange(n, device=x.device)
        logits = conf = exit_index = None
        h = net.stem(x)
        for i, stage in enumerate(net.stages, 1):
            h = stage(h)
            if i not in exits:
                continue
            k = exits.index(i)
            z = net.heads[str(i)](h)
            c = confidence(z, criterion)
            if logits is None:
                logits = z.new_empty(n, z.shape[1])
                conf = c.new_empty(n)
                exit_index = torch.full((n,), -1, dtype=torch.long, device=x.device)
            done = c >= t[k] if k < len(exits) - 1 else torch.ones_like(c, dtype=torch.bool)
            logits[rows[done]], conf[rows[done]], exit_index[rows[done]] = z[done], c[done], k
            rows, h = rows[~done], h[~done]
            if rows.numel() == 0:
                break
        stages = torch.tensor(exits, device=x.device)[exit_index]
        return EarlyExitResult(logits, exit_index, stages, conf)

    @torch.no_grad()
    def calibrate_thresholds(self, val_loader: Iterable, budget: float,
                             metric: str = "latency_ms", criterion: str = "max_softmax",
                             grid: int = 20) -> ThresholdCalibration:
        """Per-exit thresholds whose expected per-sample cost (the cost of running up to the
        exit a sample leaves at) is at most ``budget``, with the highest accuracy on
        ``val_loader``. Grid search over quantiles of each exit's confidence."""
        costs = torch.tensor(self.info.exit_costs[metric], dtype=torch.float64)
        if budget < costs[0]:
            raise ValueError(f"budget {budget:.6g} {metric} is below the cheapest early-exit "
                             f"policy (every sample at the first exit: {float(costs[0]):.6g})")
        confs, correct = [], []
        for x, y in val_loader:
            logits = self.module(x)
            confs.append(torch.stack([confidence(z, criterion) for z in logits]))
            correct.append(torch.stack([(z.argmax(-1) == y).double() for z in logits]))
        conf, right = torch.cat(confs, 1), torch.cat(correct, 1)  # [exits, samples]
        n_exits, n = conf.shape
        while (grid + 2) ** (n_exits - 1) > 50_000 and grid > 2:
            grid //= 2
        levels = torch.linspace(0, 1, grid + 1, dtype=conf.dtype)
        options = [sorted({0.0, NEVER, *torch.quantile(conf[k], levels).tolist()})
                   for k in range(n_exits - 1)]
        cols = torch.arange(n)
        best = None
        for combo in itertools.product(*options):
            passed = torch.stack([conf[k] >= combo[k] for k in range(n_exits - 1)]
                                 + [torch.ones(n, dtype=torch.bool)])
            first = passed.to(torch.int8).argmax(0)
            cost, acc = float(costs[first].mean()), float(right[first, cols].mean())
            if cost <= budget * (1 + 1e-9) and (best is None or (acc, -cost) > best[:2]):
                best = (acc, -cost, list(combo), first)
        acc, neg_cost, thresholds, first = best
        fractions = torch.bincount(first, minlength=n_exits).double() / n
        return ThresholdCalibration([*thresholds, 0.0], -neg_cost, acc, float(right[-1].mean()),
                                    fractions.tolist(), metric)


def _thresholds(thresholds: float | Sequence[float], n_exits: int) -> list[float]:
    if isinstance(thresholds, int | float):
        return [float(thresholds)] * n_exits
    t = [float(v) for v in thresholds]
    if len(t) not in (n_exits - 1, n_exits):
        raise ValueError(f"thresholds: give one per exit ({n_exits}, the last is ignored) or "
                         f"one per exit but the last ({n_exits - 1}), got {len(t)}")
    return t + [0.0] * (n_exits - len(t))
