"""Fidelity: does the additive table predict what whole subnetworks really cost?

Sampled members (always including the largest and smallest) are extracted from a randomly
initialised supernet (weights do not change latency), run on the table's runtime (the exported
integer ONNX for the onnxruntime target) and timed end to end. In the same interleaved rounds,
with the same threads and clock, the check also re-times the table's entries those members
use and the per-network overhead run, so "table measured now" and "members measured now" see
the same machine. Reported on held-out test members: MAPE, Kendall τ (ranking is what a search
relies on) and the share within ±10%, for
- the stored table + its overhead entry (what a search uses): ``additive``;
- the entries re-timed in this run + this run's overhead;
- the additive sum without overhead;
- an analytic roofline and a learned MLP (`costmodels.predictors`), and the linear correction
  ``measured ≈ a·predicted + b·layers + c`` — all fitted on a separate set of members.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from costmodels.expected import table_cost
from costmodels.predictors import MLPPredictor, RooflineFit, member_features
from costmodels.signature import OpSignature
from costmodels.table import CostTable
from costmodels.targets import Target
from costmodels.timing import check_clock, time_interleaved
from supernet.arch import ArchConfig
from supernet.extract import extract
from supernet.layers import describe_layers
from supernet.model import SuperNet
from supernet.space import SearchSpace

BAND = 0.10  # the ±10% band of "within"


@dataclass(frozen=True)
class Agreement:
    """How well predictions (ms) match measurements (ms) over a set of members."""

    mape: float  # mean absolute percentage error, in %
    kendall_tau: float
    within_10pct: float  # share of members with |predicted / measured − 1| ≤ 10%
    n: int


def agreement(predicted: Sequence[float], measured: Sequence[float]) -> Agreement:
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = np.abs(p / m - 1.0)
    return Agreement(float(100 * rel.mean()), float(kendalltau(p, m).statistic), float((rel <= BAND).mean()),
                     len(p))


@dataclass
class LinearCorrection:
    """``measured ≈ a · predicted + b · layers + c`` (ms), least squares on a fit set."""

    a: float
    b: float
    c: float

    @classmethod
    def fit(cls, predicted: Sequence[float], layers: Sequence[int], measured: Sequence[float]
            ) -> LinearCorrection:
        design = np.column_stack([predicted, layers, np.ones(len(predicted))])
        (a, b, c), *_ = np.linalg.lstsq(design, np.asarray(measured, float), rcond=None)
        return cls(float(a), float(b), float(c))

    def __call__(self, predicted: float, layers: int) -> float:
        return self.a * predicted + self.b * layers + self.c


@dataclass
class Member:
    arch: dict
    layers: int
    predicted_ms: float  # stored table + overhead
    measured_ms: float
    spread: float
    corrected_ms: float | None = None
    predictions: dict[str, float] = field(default_factory=dict)  # model name -> ms


@dataclass
class FidelityReport:
    """Everything `check_fidelity` found; ``save`` writes ``fidelity.json`` and ``.png``."""

    table_id: str
    space: str
    device: str
    threads: int
    clock: str
    additive: Agreement
    corrected: Agreement | None = None
    correction: LinearCorrection | None = None
    test: list[Member] = field(default_factory=list)
    fit: list[Member] = field(default_factory=list)
    models: dict[str, Agreement] = field(default_factory=dict)  # held-out test, by model
    overhead_ms: dict[str, float] = field(default_factory=dict)  # "table" and "now"
    runtime: str = ""

    def summary(self) -> str:
        rows = list(self.models.items()) or [("table + overhead", self.additive)]
        lines = [f"fidelity of table {self.table_id} on {self.device} ({self.runtime}, "
                 f"{self.threads} thread(s), {self.clock} clock), space {self.space!r}",
                 f"{'held-out members':34}{'n':>4}{'MAPE %':>9}{'Kendall τ':>11}"
                 f"{'within ±10%':>13}"]
        lines += [f"{name:34}{a.n:>4}{a.mape:>9.1f}{a.kendall_tau:>11.3f}{a.within_10pct:>13.0%}"
                  for name, a in rows]
        if self.overhead_ms:
            lines.append(f"per-network overhead entry: {self.overhead_ms.get('table', 0):.4f} ms "
                         f"in the table, {self.overhead_ms.get('now', 0):.4f} ms in this run")
        if self.correction is not None:
            c = self.correction
            lines.append(f"correction (fit on {len(self.fit)} other members): measured ≈ "
                         f"{c.a:.3f}·predicted + {c.b:.4f}·layers + {c.c:.3f} ms")
        return "\n".join(lines)

    def save(self, out_dir: str | Path, name: str = "fidelity") -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, png_path = out / f"{name}.json", out / f"{name}.png"
        json_path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        self._plot(png_path)
        return json_path, png_path

    def _plot(self, path: Path) -> None:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

        fig = Figure(figsize=(5.5, 5))
        ax = fig.subplots()
        meas = [m.measured_ms for m in self.test]
        ax.scatter([m.predicted_ms for m in self.test], meas, s=14,
                   label=f"table (MAPE {self.additive.mape:.1f}%)")
        if self.corrected is not None:
            ax.scatter([m.corrected_ms for m in self.test], meas, s=14, marker="x",
                       label=f"corrected (MAPE {self.corrected.mape:.1f}%)")
        xs = [v for m in self.test for v in (m.predicted_ms, m.measured_ms, m.corrected_ms)
              if v is not None]
        line = np.linspace(0.0, max(xs) * 1.05, 50)
        ax.plot(line, line, "k-", lw=1, label="y = x")
        ax.fill_between(line, line / (1 + BAND), line / (1 - BAND), color="grey", alpha=0.2,
                        label="±10%")
        ax.set_xlabel("predicted latency (ms)")
        ax.set_ylabel("measured latency (ms)")
        ax.set_title(f"{self.space} on {self.device} ({self.clock} clock): {len(self.test)} "
                     "members")
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(path, dpi=120)


def sample_members(space: SearchSpace, n: int, seed: int, extremes: bool = True,
                   exclude: set[ArchConfig] | frozenset = frozenset()) -> list[ArchConfig]:
    """``n`` distinct random members from a seeded `random.Random` (+ largest and smallest)."""
    rng = random.Random(seed)
    out = [space.largest(), space.smallest()] if extremes else []
    seen = set(out) | set(exclude)
    out = [a for a in out if a not in exclude]
    for _ in range(100 * max(n, 1)):
        if len(out) >= n + (2 if extremes else 0):
            break
        arch = space.sample(rng)
        if arch not in seen:
            seen.add(arch)
            out.append(arch)
    return out


def check_fidelity(space: SearchSpace, table: CostTable, n_samples: int = 50,
                   device: str | None = None, threads: int = 1, seed: int = 0,
                   fit_samples: int | None = None, warmup: int = 5, repeats: int = 30,
                   progress: bool = True, clock: str = "wall", burst: int = 3
                   ) -> FidelityReport:
    """Predicted vs. measured latency of ``n_samples`` random members plus the extremes.

    Members run on the table's target (``device`` overrides it) with ``threads`` threads.
    ``fit_samples`` other members (default: as many, from seed ``seed + 1``) fit the roofline,
    the MLP and the linear correction; fewer than 3 skip them. The fit and test sets never
    share a member. Members, the entries they use and the overhead run are all timed in the
    same interleaved rounds (``warmup`` + ``repeats``, median each) with ``clock``; a member's
    timed call follows ``burst`` − 1 untimed ones, as a deployed member runs warm.
    """
    table.check_covers(space)
    target = Target(device or table.meta.target, threads)
    check_clock(clock, target.device, threads)
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG untouched
        torch.manual_seed(seed)
        net = SuperNet(space).eval()
    test_archs = sample_members(space, n_samples, seed)
    n_fit = n_samples if fit_samples is None else fit_samples
    fit_archs = (sample_members(space, n_fit, seed + 1, extremes=False, exclude=set(test_archs))
                 if n_fit >= 3 else [])
    archs = test_archs + fit_archs
    batch = table.meta.batch
    shape = (batch, space.input_channels, space.input_size, space.input_size)
    layers = [[OpSignature.from_shape(s, batch) for s in describe_layers(space, a)]
              for a in archs]
    shapes = sorted({target.runtime_signature(s) for sigs in layers for s in sigs})
    from tqdm import tqdm

    plan = target.entry_calls(tqdm(shapes, desc="preparing entries", disable=not progress),
                              space.act, shape, seed)
    calls = plan.calls + [target.network(extract(net, a), describe_layers(space, a), shape, seed)
                          for a in tqdm(archs, desc="preparing members", disable=not progress)]
    # entries exactly as the build timed them; members warm, as deployed
    bursts = [table.meta.burst] * len(plan.calls) + [burst] * len(archs)
    with target.running():
        timed = time_interleaved(calls, target.device, warmup, repeats, seed, progress, clock,
                                 bursts)
    overhead_now, now = plan.entries(timed[:len(plan.calls)])
    entry_now = {s: t for s, (t, _) in now.items()}
    members = []
    for arch, sigs, (ms, spread) in zip(archs, layers, timed[len(plan.calls):], strict=True):
        stored = table_cost(space, table, arch, "latency_ms")  # + correction, if it has one
        members.append(Member(arch.to_dict(), len(sigs), stored, ms, spread, predictions={
            "table + overhead": stored,
            "additive table (no overhead)": sum(table.lookup(s, "latency_ms") for s in sigs),
            "table re-timed now + overhead": overhead_now + sum(
                entry_now[target.runtime_signature(s)] for s in sigs)}))
    test, fit = members[:len(test_archs)], members[len(test_archs):]
    report = FidelityReport(table.id, space.name, target.name, threads, clock,
                            _agree(test, "table + overhead"), test=test, fit=fit,
                            overhead_ms={"table": table.network_overhead("latency_ms"),
                                         "now": overhead_now}, runtime=target.runtime)
    if fit:
        _fit_models(report, table, layers[:len(test_archs)], layers[len(test_archs):])
    report.models = {name: _agree(test, name) for name in test[0].predictions}
    return report


def _agree(members: list[Member], model: str) -> Agreement:
    return agreement([m.predictions[model] for m in members], [m.measured_ms for m in members])


def _fit_models(report: FidelityReport, table: CostTable, test_layers: list, fit_layers: list
                ) -> None:
    """Fit the roofline, the MLP and the linear correction on ``report.fit``; predict test."""
    fit, test = report.fit, report.test
    measured = [m.measured_ms for m in fit]
    roofline = RooflineFit.fit(fit_layers, measured)
    mlp = MLPPredictor().fit([member_features(sigs, table) for sigs in fit_layers],
                             [m.predicted_ms for m in fit], measured)
    corr = LinearCorrection.fit([m.predicted_ms for m in fit], [m.layers for m in fit],
                                measured)
    for m, sigs in zip(test, test_layers, strict=True):
        m.corrected_ms = corr(m.predicted_ms, m.layers)
        m.predictions["analytic roofline (fitted)"] = roofline(sigs)
        m.predictions["table + linear correction"] = m.corrected_ms
        m.predictions["learned MLP on table features"] = mlp(member_features(sigs, table),
                                                            m.predicted_ms)
    report.correction = corr
    report.corrected = _agree(test, "table + linear correction")
