"""Run-time side of an exported family: switch member, exit early, follow a budget.

`FamilyRuntime.load` reads ``family.pt`` (shared supernet weights, member configs and each
member's recalibrated batch-norm statistics) into a `SuperNet` and extracts every member once,
so `set_member` is a reference swap (microseconds, no reload). Per-exit costs stored with each
member drive the early-exit thresholds (`calibrate_thresholds`) and `BudgetController`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from supernet.arch import ArchConfig
from supernet.extract import StaticNet, extract
from supernet.io import CorruptFileError, load_untrusted
from supernet.model import SuperNet
from supernet.space import SearchSpace, SpaceError

FAMILY_FORMAT = "hwnas-family"
FAMILY_VERSION = 1
CRITERIA = ("max_softmax", "entropy")
NEVER = math.inf  # a threshold no confidence (<= 1) passes
FIX = "export it again with `hwnas export --ckpt <search.ckpt> --out <dir>`"


class FamilyError(CorruptFileError):
    """A family file that cannot be used; the message names the file and the fix."""


# -- batch-norm statistics of a member, in the supernet's names ---------------------------------
def supernet_bn_name(static_name: str) -> str:
    """``stages.1.0.bn2`` (a `StaticNet` module) → ``stages.1.blocks.0.bn2`` (the `SuperNet`)."""
    return re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", static_name)


def member_bn_state(static: StaticNet) -> dict[str, torch.Tensor]:
    """The running statistics of every batch norm of a member, keyed by supernet buffer name."""
    out = {}
    for name, m in static.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for buf in ("running_mean", "running_var"):
                out[f"{supernet_bn_name(name)}.{buf}"] = getattr(m, buf).detach().clone()
    return out


@torch.no_grad()
def apply_bn_state(net: SuperNet, state: Mapping[str, torch.Tensor]) -> None:
    """Write a member's statistics into the leading channels of the shared batch norms."""
    for key, value in state.items():
        module_name, _, buf = key.rpartition(".")
        try:
            target = getattr(net.get_submodule(module_name), buf)
        except AttributeError:
            raise FamilyError(f"batch-norm statistic {key!r} names no buffer of the supernet; "
                              "the family was exported from another space") from None
        if value.shape[0] > target.shape[0]:
            raise FamilyError(f"batch-norm statistic {key!r} has {value.shape[0]} channels, "
                              f"the supernet only {target.shape[0]}")
        target[: value.shape[0]].copy_(value)


# -- the family ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberInfo:
    """One member: its config, table costs (metric → value) and the cost of running up to
    each of its exits (metric → one value per exit, shallowest first)."""

    name: str
    config: ArchConfig
    costs: dict[str, float]
    exit_costs: dict[str, list[float]]
    exit_stages: tuple[int, ...]


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


def read_family(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load ``family.pt`` with ``weights_only``; a damaged or foreign file is a `FamilyError`."""
    try:
        data = load_untrusted(path, "family checkpoint", FIX, map_location)
    except CorruptFileError as e:
        raise FamilyError(str(e)) from None
    if not isinstance(data, dict) or data.get("format") != FAMILY_FORMAT:
        raise FamilyError(f"{path}: not an hwnas family checkpoint (no format "
                          f"{FAMILY_FORMAT!r}); pass the family.pt written by `hwnas export`")
    if data.get("version") != FAMILY_VERSION:
        raise FamilyError(f"{path}: family format version {data.get('version')!r} is not "
                          f"supported (this hwnas reads {FAMILY_VERSION}); export it again")
    return data


class FamilyRuntime(nn.Module):
    """The shared supernet plus every member pre-extracted with its own BN statistics."""

    def __init__(self, net: SuperNet, infos: Sequence[MemberInfo],
                 bn_states: Mapping[str, Mapping[str, torch.Tensor]]):
        super().__init__()
        if not infos:
            raise FamilyError("a family needs at least one member")
        self.net = net.eval()
        self.infos = {m.name: m for m in infos}
        self.bn_states = {k: dict(v) for k, v in bn_states.items()}
        modules = {}
        for info in infos:
            apply_bn_state(self.net, self.bn_states[info.name])
            modules[info.name] = extract(self.net, info.config).eval()
        self.member_modules = nn.ModuleDict(modules)
        self.current = infos[-1].name

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> FamilyRuntime:
        data = read_family(path, map_location)
        try:
            space = SearchSpace(data["space"])
            net = SuperNet(space)
            net.load_state_dict(data["state_dict"])
            infos, states = [], {}
            for m in data["members"]:
                config = ArchConfig.from_dict(m["config"])
                try:
                    space.validate(config)
                except SpaceError as e:
                    raise FamilyError(f"{path}: member {m['name']!r}: {e}") from None
                infos.append(MemberInfo(m["name"], config, dict(m["costs"]),
                                        {k: list(v) for k, v in m["exit_costs"].items()},
                                        tuple(s for s in space.exit_stages
                                              if s <= config["exit"])))
                states[m["name"]] = m["bn"]
            infos.sort(key=lambda info: info.costs[data["metric"]])
        except (KeyError, TypeError, SpaceError, RuntimeError) as e:
            raise FamilyError(f"{path}: malformed family checkpoint ({type(e).__name__}: "
                              f"{e}); export it again with `hwnas export`") from None
        return cls(net, infos, states).to(map_location)

    # -- switching ----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Member names, cheapest first."""
        return list(self.infos)

    @property
    def info(self) -> MemberInfo:
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

    def supernet_forward(self, x: torch.Tensor, name: str | None = None) -> list[torch.Tensor]:
        """The shared supernet run at a member's config with its statistics (for checks)."""
        name = name or self.current
        apply_bn_state(self.net, self.bn_states[name])
        return self.net(x, self.infos[name].config)

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


# -- feedback control along the chain ------------------------------------------------------------
@dataclass(frozen=True)
class SwitchEvent:
    """One member switch made by a `BudgetController`."""

    step: int
    from_member: str
    to_member: str
    measured: float
    budget: float
    time_s: float = field(default_factory=time.perf_counter)


class BudgetController:
    """PI control of the member index on ``log(budget / measured)``: headroom moves up the
    chain, overshoot moves down. ``measured`` is latency (ms) or any cost the device reports;
    the budget may change every step (e.g. derived from battery level). A move up happens only
    if the next member, scaled by its table cost ratio, is predicted to fit, so the controller
    settles under the budget instead of oscillating across it."""

    def __init__(self, runtime: FamilyRuntime, budget: float, metric: str = "latency_ms",
                 kp: float = 1.0, ki: float = 0.5, hysteresis: float = 0.2,
                 on_switch: Callable[[SwitchEvent], None] | None = None):
        self.runtime, self.budget, self.metric = runtime, float(budget), metric
        self.kp, self.ki, self.hysteresis, self.on_switch = kp, ki, hysteresis, on_switch
        self.base = runtime.names.index(runtime.current)
        self.integral, self.steps = 0.0, 0
        self.events: list[SwitchEvent] = []

    def update(self, measured: float, budget: float | None = None) -> str:
        """Feed one measurement (and optionally a new budget); returns the current member."""
        if budget is not None:
            self.budget = float(budget)
        self.steps += 1
        names = self.runtime.names
        index = names.index(self.runtime.current)
        error = math.log(self.budget / max(measured, 1e-12))
        integral = self.integral + error
        position = self.base + self.kp * error + self.ki * integral
        wants_up = position > index + 0.5 + self.hysteresis
        wants_down = position < index - 0.5 - self.hysteresis
        target = index
        if wants_up and index + 1 < len(names):
            now, up = (self.runtime.infos[n].costs[self.metric] for n in names[index:index + 2])
            if measured * up / now <= self.budget:  # the next member is predicted to fit
                target = index + 1
        elif wants_down and index > 0:
            target = max(0, min(index - 1, round(position)))
        if target == index and (wants_up or wants_down):
            integral = self.integral  # anti-windup: it cannot move, so do not accumulate
        self.integral = integral
        if target != index:
            event = SwitchEvent(self.steps, names[index], names[target], measured, self.budget)
            self.runtime.set_member(names[target])
            self.base, self.integral = target, 0.0
            self.events.append(event)
            if self.on_switch is not None:
                self.on_switch(event)
        return self.runtime.current


def load_member(member_dir: str | Path) -> StaticNet:
    """A standalone exported member (``config.json`` + ``model.pt``) as a `StaticNet`."""
    member_dir = Path(member_dir)
    meta = json.loads((member_dir / "config.json").read_text())
    space = SearchSpace(meta["space"])
    static = extract(SuperNet(space).eval(), space.validate(ArchConfig.from_dict(meta["config"])))
    static.load_state_dict(torch.load(member_dir / "model.pt", weights_only=True))
    return static.eval()
