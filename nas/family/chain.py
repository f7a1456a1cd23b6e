"""The nested family: a chain of configs, each ⊆ the next, spanning the cost range, chosen by α.

From the top of the chain (the largest config, or α's argmax with the larger configs above it)
the chain walks down to the smallest one step at a time, each step moving one decision to its
next cheaper choice; the step taken gives up the least log-probability under softmax(α) per unit
of cost saved. Along such a path widths and depths only shrink to prefixes and bit-widths and
the exit only drop, so any subsequence is nested. ``members`` configs spread evenly (in log
cost) over the path are kept, plus the largest that fits each user budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from costmodels import CostTable, table_cost
from nas.shipping import Box, Budget, argmax_config, log_prob, log_probs_of, ship, within
from supernet import ArchConfig, SearchSpace, SpaceError

Start = Literal["largest", "argmax"]
SHIPPED = "shipped"  # the label of the member the search itself ships
CostFn = Callable[[ArchConfig], float]


@dataclass
class FamilyMember:
    """One member: table costs per metric, the cost of running up to each of its exits
    (metric → one value per exit, shallowest first) and its log-probability under α."""

    name: str
    config: ArchConfig
    costs: dict[str, float]
    exit_costs: dict[str, list[float]]
    log_prob: float
    budgets: list[str] = field(default_factory=list)  # the user budgets it was picked for


@dataclass
class Family:
    """Members ordered by strictly increasing ``metric`` cost, each nested in the next."""

    space: SearchSpace
    metric: str
    members: list[FamilyMember]
    budget_picks: dict[str, str] = field(default_factory=dict)  # "latency_ms<=1" → name
    cost_fns: dict[str, CostFn] = field(default_factory=dict, repr=False)

    def cost(self, metric: str, arch: ArchConfig) -> float:
        """The table cost of any config of the space (not only members) in ``metric``."""
        return self.cost_fns[metric](arch)

    def __getitem__(self, name: str) -> FamilyMember:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no member {name!r}; members are {[m.name for m in self.members]}")


def cached(cost: CostFn) -> CostFn:
    memo: dict[ArchConfig, float] = {}
    return lambda arch: memo[arch] if arch in memo else memo.setdefault(arch, cost(arch))


def dearest_first(configs: Collection[ArchConfig], cost: CostFn) -> list[ArchConfig]:
    """``configs`` by falling cost; ties broken by the config itself, never by set order, so
    every process (every DDP rank) orders them alike."""
    return sorted(configs, key=lambda a: (cost(a), a.items_), reverse=True)


def _step(space: SearchSpace, arch: ArchConfig, key: str, delta: int) -> ArchConfig:
    choices = space.decision(key).choices
    return ArchConfig.from_dict({**arch.to_dict(),
                                 key: choices[choices.index(arch[key]) + delta]})


def _steps_down(space: SearchSpace, log_probs: Mapping[str, torch.Tensor], cost: CostFn,
                arch: ArchConfig, stop: ArchConfig):
    """Every one-decision step down from ``arch`` (not below ``stop``): (config, saved, lost)."""
    for d in space.decisions:
        i, j = d.choices.index(arch[d.key]), d.choices.index(stop[d.key])
        if i > j:
            cand = _step(space, arch, d.key, -1)
            yield cand, cost(arch) - cost(cand), float(log_probs[d.key][i]
                                                       - log_probs[d.key][i - 1])


def descend(space: SearchSpace, log_probs: Mapping[str, torch.Tensor], cost: CostFn,
            start: ArchConfig, stop: ArchConfig) -> list[ArchConfig]:
    """The greedy path from ``start`` down to ``stop`` (``stop <= start``), both included.

    A step is scored by the log-probability it gives up per unit of cost saved. A step that
    saves nothing alone (lowering weight bits while activations stay wide, on a target that
    runs at the wider of the two) is scored together with the best step it unlocks; one that
    costs no probability either is free. Steps that save nothing at any price come last.
    """
    if not stop <= start:
        raise ValueError(f"descend: {stop} is not nested in {start}")
    path, arch = [start], start
    while arch != stop:
        best: tuple | None = None
        for cand, saved, lost in _steps_down(space, log_probs, cost, arch, stop):
            options = [((0, lost / saved), [cand])] if saved > 0 else [((1, lost), [cand])]
            if saved <= 0 and lost <= 0:
                options.append(((0, -math.inf), [cand]))
            elif saved <= 0:
                for cand2, _, lost2 in _steps_down(space, log_probs, cost, cand, stop):
                    saved2 = cost(arch) - cost(cand2)
                    if saved2 > 0:
                        options.append(((0, (lost + lost2) / saved2), [cand, cand2]))
            for option in options:
                if best is None or option[0] < best[0]:
                    best = option
        path += best[1]
        arch = path[-1]
    return path


def nested_path(space: SearchSpace, probs: Mapping[str, torch.Tensor], cost: CostFn,
                start: Start = "largest", anchors: Sequence[ArchConfig] = ()
                ) -> list[ArchConfig]:
    """Nested configs from the smallest up to the top, with strictly increasing cost.

    The path passes through every one of ``anchors`` (a nested chain, in any order), and
    ``start="argmax"`` adds α's argmax (the search's own answer) to them. Where a step saves
    no cost, the larger config of equal cost is kept, unless the smaller is an anchor.
    """
    log_probs = log_probs_of(probs)
    top, bottom = space.largest(), space.smallest()
    if start not in ("largest", "argmax"):
        raise ValueError(f"start: must be 'largest' or 'argmax', got {start!r}")
    mids = {canonical(space, a)
            for a in [*anchors, *([argmax_config(space, probs)] if start == "argmax" else [])]}
    chain = [top, *dearest_first(mids - {top, bottom}, cost), bottom]
    path = [top]
    for hi, lo in zip(chain, chain[1:], strict=False):
        path += descend(space, log_probs, cost, hi, lo)[1:]
    kept: list[ArchConfig] = []
    for arch in map(lambda a: canonical(space, a), path):  # keep each new lower cost level
        if not kept or cost(arch) < cost(kept[-1]):
            kept.append(arch)
        elif arch in mids:
            kept[-1] = arch
    return kept[::-1]


def canonical(space: SearchSpace, arch: ArchConfig) -> ArchConfig:
    """``arch`` with the decisions that change nothing written one way: those of stages past
    its exit (which never run) at their smallest choice, and a block's grouped-convs decision,
    at an expansion with no grouped candidate, as 1 (the block is dense there). The same
    network; two configs nested before are nested after."""
    past = {d.key for d in space.decisions if d.stage is not None and d.stage > arch["exit"]}
    dense = {b.dense for b in space.blocks
             if b.dense and b.dense not in past and arch[b.expand] != b.grouped_expand}
    return ArchConfig(tuple(
        (d.key, d.choices[0] if d.key in past else 1 if d.key in dense else arch[d.key])
        for d in space.decisions))


def spread(costs: Sequence[float], k: int) -> list[int]:
    """``k`` indices into ascending ``costs`` (first and last included), as evenly spaced in
    log cost as the path allows."""
    n = len(costs)
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n - 1]
    logc = [math.log(max(c, 1e-300)) for c in costs]
    targets = [logc[0] + (logc[-1] - logc[0]) * j / (k - 1) for j in range(k)]
    picks, prev = [], -1
    for j, t in enumerate(targets):
        lo, hi = prev + 1, n - (k - j)
        prev = min(range(lo, hi + 1), key=lambda i: abs(logc[i] - t))
        picks.append(prev)
    return picks


def parse_budgets(items: Sequence[str]) -> dict[str, list[float]]:
    """``["latency_ms=0.5,1,2"]`` → ``{"latency_ms": [0.5, 1.0, 2.0]}`` (CLI syntax)."""
    out: dict[str, list[float]] = {}
    for item in items:
        metric, sep, values = item.partition("=")
        try:
            if not sep or not metric.strip():
                raise ValueError
            out.setdefault(metric.strip(), []).extend(float(v) for v in values.split(","))
        except ValueError:
            raise ValueError(f"budget {item!r}: write METRIC=V1,V2,… (e.g. latency_ms=0.5,1,2)"
                             ) from None
    return out


def budget_anchors(space: SearchSpace, probs: Mapping[str, torch.Tensor],
                   budgets: Sequence[Budget], cost: CostFn,
                   fixed: Sequence[ArchConfig] = ()) -> dict[Budget, ArchConfig]:
    """For each budget the largest config cannot meet, the config closest below it (in
    [0.98, 1.00]× it where one nests) that nests with ``fixed`` and with the other budgets'
    configs, so that one chain can pass through them all.

    Each budget is projected as the shipped member is (`nas.shipping.ship`), then again inside
    the box between its neighbours in the chain (by ``cost``) when it does not nest with them,
    starting also from α's greedy path through that box.
    """
    log_probs = log_probs_of(probs)
    top, bottom = space.largest(), space.smallest()
    chain = dearest_first(set(fixed), cost)
    in_band = [b for b in budgets if any(within([b], a) and b.shortfall(a) == 0 for a in chain)]
    todo = [b for b in budgets if not within([b], top) and b not in in_band]
    # where each budget sits along the chain: its own limit when it is in the chain's metric
    # (the cost function is the same), else the cost of its unconstrained projection
    free = {b: None if b.cost is cost else ship(space, probs, [b]) for b in todo}
    level = {b: b.limit if free[b] is None else cost(free[b]) for b in todo}
    out: dict[Budget, ArchConfig] = {}
    for b in sorted(todo, key=level.get, reverse=True):
        above = [a for a in chain if cost(a) >= level[b]]
        below = [a for a in chain if cost(a) < level[b]]
        box = Box(lower=below[0] if below else None, upper=above[-1] if above else None)
        anchor = free[b]
        if anchor is None or anchor not in box:
            path = descend(space, log_probs, cost, box.upper or top, box.lower or bottom)
            fits = [a for a in path if within([b], a)]
            anchor = ship(space, probs, [b], box=box, starts=fits[:1])
        if within([b], anchor):
            out[b] = anchor
            chain = dearest_first({*chain, anchor}, cost)
    return out


def budget_labels(path: Sequence[ArchConfig], costs: Mapping[str, CostFn],
                  budgets: Mapping[str, Sequence[float]]) -> dict[int, list[str]]:
    """Path index → the budgets (``"latency_ms<=2"``) whose largest fitting config it is."""
    labels: dict[int, list[str]] = {}
    for m, values in budgets.items():
        for b in values:
            fit = [i for i, a in enumerate(path) if costs[m](a) <= b]
            if not fit:
                raise ValueError(f"budget {m}<={b:g}: no nested member fits; the smallest "
                                 f"costs {costs[m](path[0]):.6g} {m}")
            labels.setdefault(fit[-1], []).append(f"{m}<={b:g}")
    return labels


def build_family(space: SearchSpace, probs: Mapping[str, torch.Tensor], table: CostTable, *,
                 metric: str = "latency_ms", members: int = 8,
                 budgets: Mapping[str, Sequence[float]] | None = None, start: Start = "largest",
                 configs: Sequence[ArchConfig | Mapping] | None = None,
                 anchors: Mapping[str, ArchConfig] | None = None) -> Family:
    """The family of ``members`` configs along α's nested path (or the given ``configs``,
    which must form a nested chain), plus the largest path config under each budget.

    The path passes through a config close below each budget (`budget_anchors`) and through
    each of ``anchors`` (label → config, e.g. the search's shipped member), which must nest;
    ``start="argmax"`` adds α's argmax unless it does not nest with ``anchors``.
    """
    if members < 1:
        raise ValueError(f"members: must be at least 1, got {members}")
    metrics = list(table.metrics)
    for m in [metric, *(budgets or {})]:
        table.check_metric(m)
    costs = {m: cached(lambda a, m=m: table_cost(space, table, a, m)) for m in metrics}
    anchors = dict(anchors or {})
    if configs is not None:
        path = check_chain(space, configs, costs[metric], metric)
        picks = list(range(len(path)))
    else:
        ceilings = [Budget(m, costs[m], b) for m, values in (budgets or {}).items()
                    for b in values]
        fixed = check_chain(space, list(anchors.values()), costs[metric], metric) \
            if anchors else []
        argmax = argmax_config(space, probs)
        with_argmax = start == "argmax" and all(argmax <= a or a <= argmax for a in fixed)
        fixed += [argmax] if with_argmax else []
        near = budget_anchors(space, probs, ceilings, costs[metric], fixed)
        path = nested_path(space, probs, costs[metric], "largest", [*fixed, *near.values()])
        picks = spread([costs[metric](a) for a in path], members)
        if with_argmax:  # the search's own answer (or a larger config as cheap) is kept
            limit = costs[metric](argmax) * (1 + 1e-12)
            picks = sorted(set(picks) | {max(i for i, a in enumerate(path)
                                             if costs[metric](a) <= limit)})
    labels = budget_labels(path, costs, budgets or {})
    for label, arch in anchors.items():
        if configs is None:
            labels.setdefault(path.index(canonical(space, arch)), []).append(label)
    chosen = sorted(set(picks) | set(labels))
    log_probs = log_probs_of(probs)
    out = []
    for n, i in enumerate(chosen):
        a = path[i]
        exits = [s for s in space.exit_stages if s <= a["exit"]]
        out.append(FamilyMember(
            name=f"m{n}", config=a, costs={m: costs[m](a) for m in metrics},
            exit_costs={m: [costs[m](a.replace(exit=s)) for s in exits] for m in metrics},
            log_prob=log_prob(log_probs, space, a),
            budgets=labels.get(i, [])))
    picks_by_label = {lab: m.name for m in out for lab in m.budgets}
    return Family(space, metric, out, picks_by_label, costs)


def check_chain(space: SearchSpace, configs: Sequence[ArchConfig | Mapping], cost: CostFn,
                metric: str) -> list[ArchConfig]:
    """Validate user-given member configs: each in ``space``, nested, cost strictly rising."""
    chain = []
    for i, c in enumerate(configs):
        arch = c if isinstance(c, ArchConfig) else ArchConfig.from_dict(c)
        try:
            space.validate(arch)
        except SpaceError as e:
            raise SpaceError(f"member config #{i} does not belong to the checkpoint's space: "
                             f"{e}") from None
        chain.append(arch)
    if not chain:
        raise ValueError("configs: give at least one member config")
    chain.sort(key=cost)
    for a, b in zip(chain, chain[1:], strict=False):
        if not a < b or cost(a) >= cost(b):
            raise ValueError(f"member configs must form a nested chain with strictly rising "
                             f"{metric}: {a} ({cost(a):.6g}) is not a strict subset of {b} "
                             f"({cost(b):.6g})")
    return chain


def family_from_search(search, table: CostTable | None = None, **kwargs) -> Family:
    """`build_family` from a trained `SupernetSearch` (its α, space and cost table); the
    member the search ships for its own budgets is in the family, labelled ``shipped``."""
    table = table if table is not None else search.table  # the checkpoint's own
    with torch.no_grad():
        probs = {k: p.detach() for k, p in search.alpha.probs().items()}
    if search.budgets and kwargs.get("configs") is None:
        kwargs.setdefault("anchors", {SHIPPED: search.shipped()})
    return build_family(search.search_space, probs, table, **kwargs)
