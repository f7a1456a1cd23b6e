"""Fidelity: does the additive table predict what whole subnetworks really cost?

Sampled members (always including the largest and smallest) are extracted from a randomly
initialised supernet (weights do not change float latency), timed end to end, and compared
with the table's sum over their layers: MAPE, Kendall τ (ranking is what a search relies on)
and the share within ±10%. A linear correction ``measured ≈ a·predicted + b·layers + c`` —
for per-network costs the table cannot see (residual adds, Python dispatch, cache effects) —
is fitted on a separate set of members and judged only on the held-out test members.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from costmodels.expected import table_cost
from costmodels.profile import measure_networks
from costmodels.table import CostTable
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


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b: scipy's when installed, else `kendall_tau_b`."""
    try:
        from scipy.stats import kendalltau
    except ImportError:
        return kendall_tau_b(x, y)
    return float(kendalltau(x, y).statistic)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b by the direct O(n²) count of concordant and discordant pairs."""
    conc = disc = tied_x = tied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            tied_x += bool(dx == 0 and dy != 0)
            tied_y += bool(dy == 0 and dx != 0)
            conc += bool(dx * dy > 0)
            disc += bool(dx * dy < 0)
    denom = np.sqrt((conc + disc + tied_x) * (conc + disc + tied_y))
    return float((conc - disc) / denom) if denom else float("nan")


def agreement(predicted: Sequence[float], measured: Sequence[float]) -> Agreement:
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = np.abs(p / m - 1.0)
    return Agreement(float(100 * rel.mean()), kendall_tau(p, m), float((rel <= BAND).mean()),
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
    predicted_ms: float
    measured_ms: float
    spread: float
    corrected_ms: float | None = None


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

    def summary(self) -> str:
        rows = [("additive table (test)", self.additive)]
        if self.corrected is not None:
            rows.append(("corrected (held-out test)", self.corrected))
        lines = [f"fidelity of table {self.table_id} on {self.device} ({self.clock} clock), "
                 f"space {self.space!r}",
                 f"{'':28}{'n':>4}{'MAPE %':>9}{'Kendall τ':>11}{'within ±10%':>13}"]
        lines += [f"{name:28}{a.n:>4}{a.mape:>9.1f}{a.kendall_tau:>11.3f}{a.within_10pct:>13.0%}"
                  for name, a in rows]
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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 5))
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
        plt.close(fig)


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


def _members(space: SearchSpace, table: CostTable, archs: list[ArchConfig],
             times: list[tuple[float, float]]) -> list[Member]:
    return [Member(arch.to_dict(), len(describe_layers(space, arch)),
                   table_cost(space, table, arch, "latency_ms"), ms, spread)
            for arch, (ms, spread) in zip(archs, times, strict=True)]


def check_fidelity(space: SearchSpace, table: CostTable, n_samples: int = 50,
                   device: str = "cpu", threads: int = 1, seed: int = 0,
                   fit_samples: int | None = None, warmup: int = 5, repeats: int = 30,
                   progress: bool = True, clock: str = "wall") -> FidelityReport:
    """Predicted vs. measured latency of ``n_samples`` random members plus the extremes.

    ``fit_samples`` other members (default: as many, from seed ``seed + 1``) fit the linear
    correction; fewer than 3 skip it. The fit and test sets never share a member. All members
    are timed in the same interleaved rounds (``warmup`` + ``repeats``, median per member) with
    ``clock`` (see `profile.timed_call`; use the table's).
    """
    table.check_covers(space)
    torch.manual_seed(seed)
    net = SuperNet(space).eval()
    test_archs = sample_members(space, n_samples, seed)
    n_fit = n_samples if fit_samples is None else fit_samples
    fit_archs = (sample_members(space, n_fit, seed + 1, extremes=False, exclude=set(test_archs))
                 if n_fit >= 3 else [])
    # test and fit members share the same timing rounds, so they share the machine's load
    shape = (table.meta.batch, space.input_channels, space.input_size, space.input_size)
    times = measure_networks([extract(net, a) for a in test_archs + fit_archs], shape, device,
                             threads, warmup, repeats, seed, progress, clock)
    test = _members(space, table, test_archs, times[:len(test_archs)])
    fit = _members(space, table, fit_archs, times[len(test_archs):])
    report = FidelityReport(table.id, space.name, str(device), threads, clock,
                            agreement([m.predicted_ms for m in test],
                                      [m.measured_ms for m in test]), test=test, fit=fit)
    if fit:
        corr = LinearCorrection.fit([m.predicted_ms for m in fit], [m.layers for m in fit],
                                    [m.measured_ms for m in fit])
        for m in test:
            m.corrected_ms = corr(m.predicted_ms, m.layers)
        report.correction = corr
        report.corrected = agreement([m.corrected_ms for m in test],
                                     [m.measured_ms for m in test])
    return report
