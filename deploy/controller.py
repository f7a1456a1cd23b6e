"""Feedback control along a family's chain: pick members that hold a deadline or energy budget."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
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
    """PI control of the member index on ``log(budget / measured)``: headroom moves up the
    chain, overshoot moves down. ``measured`` is latency (ms) or any cost the device reports;
    the budget may change every step (e.g. derived from battery level). A move up happens only
    if the next member, scaled by its table cost ratio, is predicted to fit, so the controller
    settles under the budget instead of oscillating across it. The controller acts on the
    median of the last ``window`` measurements of the current member, so one preempted
    inference (a scheduler time slice, several times the usual latency) or the first run of a
    member just switched to does not move it, while a lasting load change does within
    ``window // 2 + 1`` steps (``window`` after a switch). Latency under contention does
    not scale with table cost (a small member fits in a scheduler slice, a larger one spans
    several), so a move up can fail; after a move down, moves up wait ``hold`` steps, and a move
    up undone within that wait doubles it (up to ``max_hold``), like TCP's back-off."""

    def __init__(self, runtime: FamilyRuntime, budget: float, metric: str = "latency_ms",
                 kp: float = 1.0, ki: float = 0.5, hysteresis: float = 0.2,
                 window: int = 3, hold: int = 8, max_hold: int = 4096, on_switch: Callable[[SwitchEvent], None] | None = None):
        self.runtime, self.budget, self.metric = runtime, float(budget), metric
        self.kp, self.ki, self.hysteresis, self.on_switch = kp, ki, hysteresis, on_switch
        self.base = runtime.names.index(runtime.current)
        if window < 1:
            raise ValueError(f"window: must be >= 1 measurement, got {window}")
        self.integral, self.steps, self.window = 0.0, 0, window
        self.recent: list[float] = []
        self.min_hold, self.max_hold, self.hold = hold, max_hold, hold
        self.blocked_until, self.last_up = 0, -(10**9)
        self.events: list[SwitchEvent] = []

    def update(self, measured: float, budget: float | None = None) -> str:
        """Feed one measurement (and optionally a new budget); returns the current member."""
        if budget is not None:
            self.budget = float(budget)
        self.steps += 1
        self.recent = [*self.recent[-(self.window - 1):], float(measured)] if self.window > 1 \
            else [float(measured)]
        if len(self.recent) < self.window:  # just switched: the member's first runs decide
            return self.runtime.current
        measured = statistics.median(self.recent)
        names = self.runtime.names
        index = names.index(self.runtime.current)
        error = math.log(self.budget / max(measured, 1e-12))
        integral = self.integral + error
        position = self.base + self.kp * error + self.ki * integral
        wants_up = position > index + 0.5 + self.hysteresis
        wants_down = position < index - 0.5 - self.hysteresis
        target = index
        if wants_up and index + 1 < len(names) and self.steps >= self.blocked_until:
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
            self.base, self.integral, self.recent = target, 0.0, []
            if target > index:
                self.last_up = self.steps
            else:  # a failed probe up doubles the wait before the next one
                failed = self.steps - self.last_up <= self.hold
                self.hold = min(2 * self.hold, self.max_hold) if failed else self.min_hold
                self.blocked_until = self.steps + self.hold
            self.events.append(event)
            if self.on_switch is not None:
                self.on_switch(event)
        return self.runtime.current
