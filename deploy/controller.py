"""Feedback control along a family's chain: pick members that hold a deadline or energy budget."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from deploy.runtime import FamilyRuntime


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
    """Model-based member choice: each member has a reference cost (its unloaded latency in ms,
    or its energy per inference), and the load is one factor, measured ÷ reference of the member
    in use. Both moves jump straight to the largest member whose reference × factor fits
    ``budget × (1 − margin)``, so a load step is answered by one switch, not a walk down.

    Fast, down only: when the median of the last ``window`` measurements exceeds the budget
    (one preempted inference among them does not count). Slow, either way: once ``up_window``
    measurements of the member in use are in, the factor is their median, and the tail above
    it (the ``quantile`` minus the median: time spent waiting for the CPU, which does not
    shrink with a member's cost) is added to each prediction, so a member whose tail misses
    (its own ``quantile`` over ``budget × (1 − margin)``) is left and one whose tail would
    miss is not chosen. Latency under CPU contention does not scale with cost (a small member fits in a
    scheduler slice, a larger one spans several), so a move up can still fail: one undone
    within ``hold`` steps doubles the wait before the next (up to ``max_hold``), like TCP's
    back-off."""

    def __init__(self, runtime: FamilyRuntime, budget: float, metric: str = "latency_ms",
                 costs: Mapping[str, float] | None = None, margin: float = 0.0,
                 window: int = 3, up_window: int = 50, quantile: float = 0.9, hold: int = 50,
                 max_hold: int = 4096, on_switch: Callable[[SwitchEvent], None] | None = None):
        if window < 1:
            raise ValueError(f"window: must be >= 1 measurement, got {window}")
        if up_window < window:
            raise ValueError(f"up_window: must be >= window ({window}), got {up_window}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin: a fraction of the budget in [0, 1), got {margin}")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile: must be in [0, 1], got {quantile}")
        self.runtime, self.budget, self.metric = runtime, float(budget), metric
        names = runtime.names
        ref = dict(costs) if costs is not None else {
            n: runtime.infos[n].costs[metric] for n in names}
        missing = [n for n in names if n not in ref or not ref[n] > 0]
        if missing:
            raise ValueError(f"costs: member {missing[0]!r} has no positive {metric}; give "
                             "every member's reference cost (e.g. measure_members)")
        self.costs = [float(ref[n]) for n in names]  # by chain index
        self.margin, self.window, self.up_window, self.quantile = margin, window, up_window, quantile
        self.recent: deque[float] = deque(maxlen=up_window)  # of the member in use only
        self.min_hold, self.max_hold, self.hold = hold, max_hold, hold
        self.steps, self.blocked_until, self.last_up = 0, 0, -(10**9)
        self.on_switch = on_switch
        self.events: list[SwitchEvent] = []

    def fits(self, factor: float, wait: float = 0.0) -> int:
        """Chain index of the largest member predicted to fit at load ``factor`` plus a
        ``wait`` (same unit as the budget) that every member pays (0 if none fits)."""
        limit = self.budget * (1.0 - self.margin)
        best = 0
        for i, cost in enumerate(self.costs):
            if cost * factor + wait <= limit:
                best = i
        return best

    def update(self, measured: float, budget: float | None = None) -> str:
        """Feed one measurement (and optionally a new budget); returns the current member."""
        if budget is not None:
            self.budget = float(budget)
        self.steps += 1
        self.recent.append(float(measured))
        names = self.runtime.names
        index = names.index(self.runtime.current)
        target = index
        n = len(self.recent)
        if n >= self.window:
            last = sorted(self.recent[n - 1 - k] for k in range(self.window))
            median = last[len(last) // 2]
            if median > self.budget and index > 0:
                target = min(index - 1, self.fits(median / self.costs[index]))
        if target == index and n == self.up_window:
            ordered = sorted(self.recent)
            q, median = ordered[math.ceil(self.quantile * (n - 1))], ordered[n // 2]
            target = self.fits(median / self.costs[index], q - median)
            if target > index and self.steps < self.blocked_until:
                target = index
        if target != index:
            self._switch(index, target, measured)
        return self.runtime.current

    def _switch(self, index: int, target: int, measured: float) -> None:
        names = self.runtime.names
        event = SwitchEvent(self.steps, names[index], names[target], measured, self.budget)
        self.runtime.set_member(names[target])
        self.recent.clear()
        if target > index:
            self.last_up = self.steps
        else:  # a move up undone before its hold ran out doubles the next wait
            failed = self.steps - self.last_up <= self.hold
            self.hold = min(2 * self.hold, self.max_hold) if failed else self.min_hold
            self.blocked_until = self.steps + self.hold
        self.events.append(event)
        if self.on_switch is not None:
            self.on_switch(event)
