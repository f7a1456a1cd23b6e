"""Measured cost tables: time every layer signature of a space on a torch device.

Each layer is built as the extracted network runs it (frozen input quantizer, conv, batch
norm, activation; or pool + linear) and timed in inference mode with a fixed thread count.
Layers are timed interleaved — each round runs every layer once, in a fresh shuffled order —
because a layer timed in a tight loop of itself finds its weights and code cached and runs
markedly faster than it does inside a network. A layer's latency is its median over rounds (ms),
by wall clock, or by the timing thread's CPU time on a machine shared with other work (see
`timed_call`). CUDA times use CUDA events around synchronised calls.
"""

from __future__ import annotations

import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from timm.layers import create_act_layer
from torch import nn
from tqdm import tqdm

from costmodels.analytic import count_metrics
from costmodels.signature import FLOAT_BITS, OpSignature, enumerate_signatures
from costmodels.table import CostTable, TableMeta
from supernet.quant import FakeQuantAct, initial_step
from supernet.space import SearchSpace


def op_module(sig: OpSignature, act: str) -> nn.Module:
    """The layer as an extracted network runs it; ``act`` is the space's activation name."""
    layers: list[nn.Module] = []
    if sig.act_bits < FLOAT_BITS:
        layers.append(FakeQuantAct(initial_step(sig.act_bits), sig.act_bits))
    if sig.kind == "linear":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(sig.in_channels,
                                                                       sig.out_channels)]
    else:
        layers += [nn.Conv2d(sig.in_channels, sig.out_channels, sig.kernel, sig.stride,
                             sig.kernel // 2, groups=sig.groups, bias=False),
                   nn.BatchNorm2d(sig.out_channels)]
        if sig.activation:
            layers.append(create_act_layer(act))
    return nn.Sequential(*layers).eval()


def runtime_signature(sig: OpSignature) -> OpSignature:
    """The signature with what does not change float runtime erased.

    Extracted weights are stored already quantized in float, so weight bits cost nothing, and a
    frozen activation quantizer runs the same ops at 4 or 8 bits: only "quantized or not" stays.
    """
    return replace(sig, weight_bits=FLOAT_BITS, act_bits=8 if sig.act_bits < FLOAT_BITS
                   else FLOAT_BITS)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with a fixed intra-op thread count, restoring the previous one afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def time_callable(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
                  clock: str = "wall") -> tuple[float, float]:
    """Median time of one call in ms and its spread, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return median_spread([timed_call(fn, device, clock) for _ in range(max(repeats, 1))])


def time_interleaved(fns: Sequence[Callable[[], object]], device: torch.device, warmup: int,
                     repeats: int, seed: int = 0, progress: bool = False, clock: str = "wall"
                     ) -> list[tuple[float, float]]:
    """Median ms and spread of each function, timed one call per round in shuffled order."""
    rng = random.Random(seed)
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in tqdm(range(warmup + max(repeats, 1)), desc="timing rounds", disable=not progress):
        rng.shuffle(order)
        for i in order:
            t = timed_call(fns[i], device, clock)
            if r >= warmup:
                times[i].append(t)
    return [median_spread(t) for t in times]


def measure_module(module: nn.Module, input_shape: tuple[int, ...], device: str | torch.device,
                   threads: int = 1, warmup: int = 10, repeats: int = 50, clock: str = "wall"
                   ) -> tuple[float, float]:
    """Latency of ``module(x)`` for a random input of ``input_shape``: (median ms, spread)."""
    device = torch.device(device)
    check_clock(clock, device, threads)
    module = module.to(device).eval()
    x = torch.randn(input_shape, device=device)
    with torch_threads(threads), torch.inference_mode():
        return time_callable(lambda: module(x), device, warmup, repeats, clock)


def measure_networks(modules: Sequence[nn.Module], input_shape: tuple[int, ...],
                     device: str | torch.device = "cpu", threads: int = 1, warmup: int = 10,
                     repeats: int = 30, seed: int = 0, progress: bool = False,
                     clock: str = "wall") -> list[tuple[float, float]]:
    """End-to-end latency of whole (extracted) networks: (median ms, IQR / median) each.

    Timed interleaved, one call of each per round in shuffled order, so a burst of load on a
    shared machine hits all networks alike instead of skewing the few measured during it.
    The modules are moved to ``device``.
    """
    device = torch.device(device)
    check_clock(clock, device, threads)
    x = torch.randn(input_shape, device=device)
    placed = [m.to(device).eval() for m in modules]
    calls = [lambda m=m: m(x) for m in placed]
    with torch_threads(threads), torch.inference_mode():
        return time_interleaved(calls, device, warmup, repeats, seed, progress, clock)


def measure_network_latency(module: nn.Module, input_shape: tuple[int, ...],
                            device: str | torch.device = "cpu", threads: int = 1,
                            warmup: int = 10, repeats: int = 30, clock: str = "wall"
                            ) -> tuple[float, float]:
    """End-to-end latency of one network, moved to ``device``: (median ms, IQR / median)."""
    return measure_networks([module], input_shape, device, threads, warmup, repeats,
                            clock=clock)[0]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (Linux), for a table's metadata."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def build_measured_table(space: SearchSpace, device: str | torch.device = "cpu", batch: int = 1,
                         threads: int = 1, warmup: int = 10, repeats: int = 100,
                         space_file: str | None = None, progress: bool = True,
                         seed: int = 0, clock: str = "wall") -> CostTable:
    """Time every runtime shape of ``space`` (``warmup`` + ``repeats`` interleaved rounds).

    Entries hold ``latency_ms``, its relative ``latency_spread`` and the count metrics of
    `analytic.count_metrics`; every bit-width variant of a runtime shape shares its time.
    """
    device = torch.device(device)
    check_clock(clock, device, threads)
    signatures = sorted(enumerate_signatures(space, batch))
    shapes = sorted({runtime_signature(s) for s in signatures})
    torch.manual_seed(seed)
    calls = []
    for shape in shapes:
        module = op_module(shape, space.act).to(device)
        x = torch.randn(batch, shape.in_channels, shape.in_size, shape.in_size, device=device)
        calls.append(lambda m=module, x=x: m(x))
    with torch_threads(threads), torch.inference_mode():
        results = time_interleaved(calls, device, warmup, repeats, seed, progress, clock)
    timed = dict(zip(shapes, results, strict=True))
    entries = {}
    for s in signatures:
        latency, spread = timed[runtime_signature(s)]
        entries[s.key] = {**count_metrics(s), "latency_ms": latency, "latency_spread": spread}
    meta = TableMeta(
        target=device.type, device=device_name(device), method="measured",
        torch_version=torch.__version__, batch=batch,
        threads=threads if device.type == "cpu" else None, warmup=warmup, repeats=repeats,
        clock=clock, spread=statistics.median(r[1] for r in results),
        notes=(f"{len(shapes)} runtime shapes timed for {len(signatures)} signatures: weight "
               "bits do not change the float latency of baked fake-quantized weights, and 4- "
               "and 8-bit activation quantizers run the same ops, so each shape was timed once "
               "and its value filled into every bit-width variant. Interleaved rounds (each "
               "shape once per round, shuffled); median over rounds; spread = IQR / median."),
    ).for_space(space, space_file)
    return CostTable(entries, meta)
