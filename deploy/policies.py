"""What the policies know before a stream: each member's latency (unloaded, and under each
load level for the oracle), its stored accuracy and its energy per inference; the offline pick
and the oracle's pick per load level. Needs neither Lightning nor wandb (nor costmodels: an
energy pricer is passed in).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from deploy.load import LoadGenerator
from deploy.runtime import FamilyRuntime

Clock = Callable[[], float]  # seconds, monotonic


def time_members(runtime: FamilyRuntime, inputs: Iterator, repeats: int = 30,
                 clock: Clock = time.perf_counter) -> dict[str, list[float]]:
    """Batch-1 latencies (ms) of every member, ``repeats`` each, interleaved round-robin."""
    times: dict[str, list[float]] = {n: [] for n in runtime.names}
    keep = runtime.current
    with torch.inference_mode():
        for _ in range(repeats):
            for name in runtime.names:
                runtime.set_member(name)
                item = next(inputs)
                x = item[0] if isinstance(item, tuple | list) else item
                t0 = clock()
                runtime(x)
                times[name].append((clock() - t0) * 1e3)
    runtime.set_member(keep)
    return times


def measure_members(runtime: FamilyRuntime, inputs: Iterator, repeats: int = 30,
                    clock: Clock = time.perf_counter) -> dict[str, float]:
    """Median batch-1 latency (ms) of every member, interleaved round-robin in this process."""
    return {n: float(np.median(v)) for n, v in time_members(runtime, inputs, repeats,
                                                            clock).items()}


def measure_levels(runtime: FamilyRuntime, inputs: Iterator, levels: Iterable[int],
                   repeats: int = 150, settle_s: float = 0.3) -> dict[int, dict[str, list[float]]]:
    """Every member's latencies (ms) under each load level (busy processes), for the oracle."""
    out = {}
    with LoadGenerator("none", 1.0) as load:
        for level in levels:
            load.set_level(level)
            time.sleep(settle_s)
            out[level] = time_members(runtime, inputs, repeats)
    return out


def member_accuracy(runtime: FamilyRuntime) -> dict[str, float]:
    """Each member's stored test accuracy at its last exit (its chain index if none stored)."""
    return {n: (runtime.infos[n].accuracy[-1] if runtime.infos[n].accuracy else float(i))
            for i, n in enumerate(runtime.names)}


def best_member(fits: Iterable[str], accuracy: Mapping[str, float], names: list[str]) -> str:
    """The most accurate of ``fits`` (the cheaper one on a tie)."""
    return max(fits, key=lambda n: (accuracy[n], -names.index(n)))


def oracle_picks(by_level: Mapping[int, Mapping[str, list[float]]], deadline_ms: float,
                 accuracy: Mapping[str, float], max_miss: float = 0.01) -> dict[int, str]:
    """Per load level, the most accurate member whose measured share of latencies over the
    deadline is at most ``max_miss``; where none is, the one that misses least."""
    picks = {}
    for level, lat in by_level.items():
        names = list(lat)
        miss = {n: float(np.mean(np.asarray(v) > deadline_ms)) for n, v in lat.items()}
        fits = [n for n in names if miss[n] <= max_miss]
        picks[level] = (best_member(fits, accuracy, names) if fits
                        else min(names, key=lambda n: (miss[n], names.index(n))))
    return picks


EnergyPricer = Callable[[object, Mapping[str, object], str], dict[str, float]]
"""(search space, member name → config, analytic target name) → member name → mJ/inference."""


def member_energy(runtime: FamilyRuntime, price: EnergyPricer | None = None,
                  target: str = "mcu") -> dict[str, float]:
    """Energy per inference (mJ) of every member: the stored ``energy_mj`` cost if every member
    has one, else ``price`` (an analytic table of ``target``; `hwnas run` passes costmodels')."""
    if all("energy_mj" in m.costs for m in runtime.infos.values()):
        return {n: m.costs["energy_mj"] for n, m in runtime.infos.items()}
    if price is None:
        raise ValueError("energy: the family's members store no energy_mj cost; pass an energy "
                         "pricer (hwnas run prices them with an analytic target, --energy-target)")
    return price(runtime.net.space, {n: m.config for n, m in runtime.infos.items()}, target)


def default_power(energy_mj: Mapping[str, float], deadline_ms: float) -> tuple[float, float]:
    """A battery that starts able to run the dearest member at one input per ``deadline_ms``
    and ends able to run only the cheapest (mW, 2% above each)."""
    rate_hz = 1e3 / deadline_ms
    return 1.02 * rate_hz * max(energy_mj.values()), 1.02 * rate_hz * min(energy_mj.values())


def offline_pick(latencies_ms: dict[str, float], deadline_ms: float) -> str:
    """The largest member whose unloaded median latency fits the deadline (else the cheapest)."""
    fits = [n for n, v in latencies_ms.items() if v <= deadline_ms]
    return fits[-1] if fits else next(iter(latencies_ms))
