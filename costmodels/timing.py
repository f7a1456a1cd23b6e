"""Timing one call: by wall clock or by the timing thread's CPU time, CUDA with events around
synchronised calls; and many calls interleaved, one each per round in a fresh shuffled order,
so that the machine's load spreads over all of them alike. Medians in ms with their spread."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

CLOCKS = ("wall", "thread")


def timed_call(fn: Callable[[], object], device: torch.device, clock: str = "wall") -> float:
    """Milliseconds of one call.

    ``wall``: elapsed time (CUDA: event time of the work it queued, synchronised). ``thread``
    (CPU, one thread): CPU time of the calling thread — equal to latency on an idle core, but
    not inflated when other processes share the machine's cores.
    """
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return begin.elapsed_time(end)
    now = time.thread_time if clock == "thread" else time.perf_counter
    start = now()
    fn()
    return (now() - start) * 1e3


def check_clock(clock: str, device: torch.device, threads: int) -> None:
    if clock not in CLOCKS:
        raise ValueError(f"clock: must be one of {CLOCKS}, got {clock!r}")
    if clock == "thread" and (device.type != "cpu" or threads != 1):
        raise ValueError(f"clock 'thread' times the calling thread, so it needs device cpu and "
                         f"threads=1 (got {device}, threads={threads}); use clock 'wall'")


def median_spread(times: Sequence[float]) -> tuple[float, float]:
    """Median (ms) and spread = interquartile range / median."""
    median = statistics.median(times)
    if len(times) < 2 or median <= 0:
        return median, 0.0
    q = statistics.quantiles(times, n=4)
    return median, (q[2] - q[0]) / median


def time_interleaved(fns: Sequence[Callable[[], object]], device: torch.device, warmup: int,
                     repeats: int, seed: int = 0, progress: bool = False, clock: str = "wall",
                     bursts: Sequence[int] | None = None) -> list[tuple[float, float]]:
    """Median ms and spread of each function, timed one call per round in shuffled order.

    ``bursts[i] = k`` runs function ``i`` k − 1 times untimed right before its timed call:
    a network then runs as it does when deployed (again and again, its weights in cache)
    while the rounds still spread the machine's load over all functions alike.
    """
    rng = random.Random(seed)
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    bursts = bursts or [1] * len(fns)
    for r in tqdm(range(warmup + max(repeats, 1)), desc="timing rounds", disable=not progress):
        rng.shuffle(order)
        for i in order:
            for _ in range(bursts[i] - 1):
                fns[i]()
            t = timed_call(fns[i], device, clock)
            if r >= warmup:
                times[i].append(t)
    return [median_spread(t) for t in times]
