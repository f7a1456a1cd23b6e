"""Differentiable expected cost of an architecture distribution.

For every layer slot the table is gathered once into a tensor over the product of the choices
of the decisions that shape it (its input width is the previous layer's width decision, so
that is among them). A forward pass contracts that tensor with those decisions' probability
vectors and weighs it by the probability that the slot runs (its stage is deep enough and the
exit comes at or after it). Decisions are treated as independent, as the relaxation samples
them. All of it is float64, so a one-hot distribution gives the concrete cost exactly. The
table's per-network overhead (launch, input, output) is added once: it moves E[cost], not α.
A table with a fitted correction (``a · (Σ layers + overhead) + b · layers + c``) applies it
here too, with E[number of layers] from the same run probabilities: still differentiable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from costmodels.priced import layer_count, member_signatures, priced_slots
from costmodels.table import CostTable, reduction
from supernet.arch import ArchConfig
from supernet.layers import Condition
from supernet.space import SearchSpace

DTYPE = torch.float64


class ExpectedCost(nn.Module):
    """``forward(probs)`` = E[cost] of a relaxed architecture in ``metric``'s units (float64).

    ``probs`` maps each decision key to a probability vector over its choices (as
    ``SearchSpace.one_hot`` or an α softmax gives); gradients flow to every vector. Summed
    metrics give the exact expectation. For a max metric (``peak_activation_bytes``) it is the
    max over slots of P(slot runs) · E[slot cost], a lower bound of E[max] that equals the
    concrete value at one-hot distributions.
    """

    def __init__(self, space: SearchSpace, table: CostTable, metric: str = "latency_ms"):
        super().__init__()
        table.check_covers(space)  # a clear error for another space's table, before any lookup
        table.check_metric(metric)
        self.space, self.metric, self.table_id = space, metric, table.id
        self.batch = table.meta.batch
        self.reduce = reduction(metric)
        self.table = table  # `CostTable.network_cost`: overhead and correction
        self._slots: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
        self._values: dict[str, float] = {}  # signature key -> table value, for `concrete`
        self._priced = None
        for i, slot in enumerate(self.priced):
            keys = slot.keys
            sizes = [len(space.decision(k).choices) for k in keys]
            cost = torch.zeros(sizes, dtype=DTYPE)
            count = torch.ones(sizes, dtype=DTYPE)  # layers, if it runs (a skip: none)
            for idx, sig in slot.signatures(space):
                cost[idx] = self._values.setdefault(sig.key, table.lookup(sig, metric))
                count[idx] = layer_count(sig)
            run_keys = []
            for key, (lo, hi) in _runs_if(slot.runs_if).items():
                mask = torch.tensor([float(lo <= c <= hi) for c in space.decision(key).choices],
                                    dtype=DTYPE)
                if key in keys:  # shapes and gating share a decision: fold the gate in
                    dim = keys.index(key)
                    view = [-1 if d == dim else 1 for d in range(len(keys))]
                    cost, count = cost * mask.view(view), count * mask.view(view)
                elif bool(mask.all()):
                    continue  # always runs (e.g. depth >= 1)
                else:
                    self.register_buffer(f"mask{i}_{len(run_keys)}", mask)
                    run_keys.append(key)
            self.register_buffer(f"cost{i}", cost)
            self.register_buffer(f"count{i}", count, persistent=False)
            self._slots.append((slot.name, keys, tuple(run_keys)))

    @property
    def priced(self) -> list:
        """The slots the table prices this space by (`costmodels.priced.priced_slots`)."""
        if self._priced is None:
            self._priced = priced_slots(self.space, self.table.entries, self.batch)
        return self._priced

    def __getstate__(self) -> dict:
        # the slots close over the space's layer builders, which do not pickle (ddp_spawn
        # pickles the module); they are rebuilt on first use
        return {**self.__dict__, "_priced": None}

    @classmethod
    def for_metrics(cls, space: SearchSpace, table: CostTable, metrics: Sequence[str]
                    ) -> nn.ModuleDict:
        """One `ExpectedCost` per metric, keyed by metric name."""
        return nn.ModuleDict({m: cls(space, table, m) for m in metrics})

    def slot_costs(self, probs: Mapping[str, torch.Tensor], what: str = "cost") -> torch.Tensor:
        """Per slot, P(slot runs) · E[its cost] (``what="count"``: P(slot runs)): a float64
        vector in execution order."""
        p = self._check(probs)
        terms = []
        for i, (_, keys, run_keys) in enumerate(self._slots):
            cost = getattr(self, f"{what}{i}")
            operands: list = [cost, list(range(len(keys)))]
            for d, key in enumerate(keys):
                operands += [p[key], [d]]
            term = torch.einsum(*operands, [])
            for j, key in enumerate(run_keys):
                term = term * (getattr(self, f"mask{i}_{j}") @ p[key])
            terms.append(term)
        return torch.stack(terms)

    def forward(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        terms = self.slot_costs(probs)
        if self.reduce == "max":
            return terms.amax()
        # sequential, in layer order: one-hot gives `concrete` exactly
        layers = self.slot_costs(probs, "count").sum() if self.table.correction else 0
        return self.table.network_cost(terms.cumsum(0)[-1], layers, self.metric)

    def concrete(self, arch: ArchConfig) -> float:
        """The table cost of one concrete member (same units), summed (or maxed) over what it
        runs: its layers, or its blocks where the table prices blocks whole."""
        ran = member_signatures(self.space, self.priced, arch)
        values = [self._values[sig.key] for sig, _ in ran]
        total = max(values) if self.reduce == "max" else sum(values)
        return self.table.network_cost(total, sum(n for _, n in ran), self.metric)

    def _check(self, probs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for d in self.space.decisions:
            if d.key not in probs:
                raise KeyError(f"expected cost needs probabilities for decision {d.key!r}; "
                               f"got keys {sorted(probs)}")
            v = probs[d.key]
            if v.shape != (len(d.choices),):
                raise ValueError(f"{d.key}: expected {len(d.choices)} probabilities (one per "
                                 f"choice {list(d.choices)}), got shape {tuple(v.shape)}")
            out[d.key] = v.to(device=self.cost0.device, dtype=DTYPE)
        return out


def table_cost(space: SearchSpace, table: CostTable, arch: ArchConfig,
               metric: str = "latency_ms") -> float:
    """The cost of a concrete member read straight from ``table`` (its overhead included,
    and its fitted correction, if it has one); blocks priced whole where the table has them."""
    ran = member_signatures(space, priced_slots(space, table.entries, table.meta.batch), arch)
    values = [table.lookup(sig, metric) for sig, _ in ran]
    total = max(values) if reduction(metric) == "max" else sum(values)
    return table.network_cost(total, sum(n for _, n in ran), metric)


def _runs_if(conditions: Sequence[Condition]) -> dict[str, tuple[float, float]]:
    """The range each decision must lie in; two conditions on one decision intersect."""
    out: dict[str, tuple[float, float]] = {}
    for key, lo, hi in conditions:
        was_lo, was_hi = out.get(key, (lo, hi))
        out[key] = (max(lo, was_lo), min(hi, was_hi))
    return out
