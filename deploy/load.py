"""What changes while a family runs: competing CPU load on a schedule, and a falling battery.

`LoadGenerator` starts and stops CPU-bound processes to follow `load_level`, so a deadline can
be watched held on a real, shared machine; `battery_power` is the energy budget per second
(mW = mJ/s) of the ``battery`` scenario, which adds no CPU load.
"""

from __future__ import annotations

import math
import multiprocessing as mp

SCENARIOS = ("none", "step", "ramp", "periodic", "battery")


def load_level(scenario: str, t_s: float, duration_s: float, peak: int) -> int:
    """Competing busy processes at ``t_s`` of a ``duration_s`` run: none (and battery); step
    (``peak`` in the middle third); ramp (0 → peak over the first two thirds, then off);
    periodic (``peak`` for the second half of each sixth)."""
    f = t_s / duration_s if duration_s > 0 else 0.0
    if scenario in ("none", "battery"):
        return 0
    if scenario == "step":
        return peak if 1 / 3 <= f < 2 / 3 else 0
    if scenario == "ramp":
        return min(peak, math.floor(f * 1.5 * (peak + 1))) if f < 2 / 3 else 0
    if scenario == "periodic":
        return peak if (f * 6) % 1 >= 0.5 else 0
    raise ValueError(f"load scenario: must be one of {SCENARIOS}, got {scenario!r}")


def battery_power(t_s: float, duration_s: float, start_mw: float, end_mw: float) -> float:
    """Energy budget per second (mW) at ``t_s``: falls geometrically (by the same fraction each
    second, as a battery saver tightens) from ``start_mw`` to ``end_mw`` over the first 90% of
    the run, then stays at ``end_mw``."""
    f = min(1.0, t_s / (0.9 * duration_s)) if duration_s > 0 else 1.0
    return start_mw * (end_mw / start_mw) ** f


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(10_000):
            x += 1


class LoadGenerator:
    """Starts and stops CPU-bound processes to follow `load_level` (or a level set by hand);
    a context manager that stops them all on exit."""

    def __init__(self, scenario: str, duration_s: float, peak: int = 2):
        load_level(scenario, 0.0, 1.0, peak)  # validates the name
        self.scenario, self.duration_s, self.peak = scenario, duration_s, peak
        self.ctx = mp.get_context("fork")
        self.procs: list[tuple] = []

    def update(self, t_s: float) -> int:
        """Follow the scenario's schedule at ``t_s``; returns the level (busy processes)."""
        return self.set_level(load_level(self.scenario, t_s, self.duration_s, self.peak))

    def set_level(self, want: int) -> int:
        while len(self.procs) < want:
            stop = self.ctx.Event()
            p = self.ctx.Process(target=_busy, args=(stop,), daemon=True)
            p.start()
            self.procs.append((p, stop))
        while len(self.procs) > want:
            p, stop = self.procs.pop()
            stop.set()
            p.join(timeout=2)
        return want

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc) -> None:
        for _, stop in self.procs:
            stop.set()
        for p, _ in self.procs:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
        self.procs.clear()
