"""Whole-network latency predictors beyond the additive table: an expert roofline, a learned MLP.

Both are fitted on measured members (the fit set) and judged on others (`fidelity`):
- `RooflineFit`: the analytic expert model, ``Σ max(MACs / P, bytes / B) + c`` per layer with
  the host's peak rate ``P`` (MAC/s), bandwidth ``B`` (bytes/s) and overhead ``c`` (ms) fitted
  (a grid over P and B, least squares for c). No table: what an expert would write down.
- `MLPPredictor`: a small torch MLP on per-member features (table time, MACs, bytes and layer
  counts by kind and kernel kind, all log-scaled) that predicts ``log(measured / table)``: it
  learns a multiplicative correction of the table rather than latency from scratch, which is
  what ~50 measured members can support. torch, not a new dependency: scikit-learn is not
  among hwnas's requirements, and 50 samples need no boosted trees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from costmodels.analytic import activation_bytes, macs, weight_bytes
from costmodels.signature import OpSignature
from costmodels.table import CostTable

KINDS = ("conv", "dwconv", "linear")


@dataclass
class RooflineFit:
    """``latency_ms = Σ_layers max(macs / peak, bytes / bandwidth) · 1e3 + overhead_ms``."""

    peak_macs: float  # MAC/s
    bandwidth: float  # bytes/s
    overhead_ms: float

    @staticmethod
    def _counts(members: Sequence[Sequence[OpSignature]]) -> tuple[np.ndarray, ...]:
        """MACs and bytes of every layer, and where each member's layers start."""
        m = np.array([macs(s) for layers in members for s in layers], float)
        b = np.array([weight_bytes(s) + activation_bytes(s) for layers in members
                      for s in layers], float)
        starts = np.cumsum([0] + [len(layers) for layers in members[:-1]])
        return m, b, starts

    @staticmethod
    def _times(counts: tuple[np.ndarray, ...], peak: float, bw: float) -> np.ndarray:
        m, b, starts = counts
        return 1e3 * np.add.reduceat(np.maximum(m / peak, b / bw), starts)

    def __call__(self, layers: Sequence[OpSignature]) -> float:
        counts = self._counts([layers])
        return float(self._times(counts, self.peak_macs, self.bandwidth)[0]) + self.overhead_ms

    @classmethod
    def fit(cls, members: Sequence[Sequence[OpSignature]], measured: Sequence[float]
            ) -> RooflineFit:
        """Grid over peak (1e8..1e12 MAC/s) and bandwidth (1e8..1e12 B/s), overhead as the
        median residual; keeps the pair with the least mean relative error."""
        y, counts = np.asarray(measured, float), cls._counts(members)
        best: tuple[float, RooflineFit | None] = (math.inf, None)
        for peak in np.logspace(8, 12, 41):
            for bw in np.logspace(8, 12, 41):
                t = cls._times(counts, peak, bw)
                c = float(np.median(y - t))
                err = float(np.mean(np.abs((t + c) / y - 1)))
                if err < best[0]:
                    best = (err, cls(float(peak), float(bw), c))
        assert best[1] is not None
        return best[1]


def member_features(layers: Sequence[OpSignature], table: CostTable,
                    metric: str = "latency_ms") -> list[float]:
    """Per kind (conv, dwconv, linear) × kernel kind (integer or float operands): table time,
    MACs, bytes and layer count; then the table total. log1p-scaled."""
    feats: list[float] = []
    for kind in KINDS:
        for integer in (True, False):
            group = [s for s in layers if s.kind == kind
                     and (s.weight_bits < 32 and s.act_bits < 32) == integer]
            feats += [sum(table.lookup(s, metric) for s in group) * 1e3,
                      sum(macs(s) for s in group) / 1e3,
                      sum(weight_bytes(s) + activation_bytes(s) for s in group) / 1e3,
                      float(len(group))]
    total = sum(table.lookup(s, metric) for s in layers) + table.network_overhead(metric)
    return [math.log1p(max(f, 0.0)) for f in feats] + [math.log(total)]


class MLPPredictor:
    """``measured ≈ table · exp(mlp(features))``, trained full-batch with Adam (seeded)."""

    def __init__(self, hidden: int = 16, steps: int = 600, lr: float = 1e-2,
                 weight_decay: float = 1e-3, seed: int = 0):
        self.hidden, self.steps, self.lr, self.wd, self.seed = hidden, steps, lr, weight_decay, seed

    def fit(self, features: Sequence[Sequence[float]], table_ms: Sequence[float],
            measured: Sequence[float]) -> MLPPredictor:
        x = torch.tensor(features, dtype=torch.float64)
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        y = torch.log(torch.tensor(measured, dtype=torch.float64)
                      / torch.tensor(table_ms, dtype=torch.float64))
        gen = torch.Generator().manual_seed(self.seed)
        self.net = nn.Sequential(nn.Linear(x.shape[1], self.hidden), nn.Tanh(),
                                 nn.Linear(self.hidden, 1)).double()
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.wd)
        xs = (x - self.mean) / self.std
        for _ in range(self.steps):
            opt.zero_grad()
            loss = ((self.net(xs).squeeze(-1) - y) ** 2).mean()
            loss.backward()
            opt.step()
        return self

    @torch.no_grad()
    def __call__(self, features: Sequence[float], table_ms: float) -> float:
        x = (torch.tensor([features], dtype=torch.float64) - self.mean) / self.std
        return float(table_ms * torch.exp(self.net(x)).item())
