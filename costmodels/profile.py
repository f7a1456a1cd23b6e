"""Measured cost tables: time every layer signature of a space on a measured target.

Each layer is built as the extracted network runs it (frozen input quantizer, conv, batch
norm, activation; or pool + linear) and timed on the target's runtime (torch eager on CPU or
CUDA, or onnxruntime as the exported integer model, see `costmodels.targets`) in inference
mode with a fixed thread count. A run of a graph that only passes its input through is timed
with them: the per-network ``overhead`` (launch, input, output), which every layer's own call
also pays, so it is subtracted from each layer and added once per network.
Layers are timed interleaved — each round runs every layer once, in a fresh shuffled order —
because a layer timed in a tight loop of itself finds its weights and code cached and runs
markedly faster than it does inside a network. A layer's latency is its median over rounds (ms),
by wall clock, or by the timing thread's CPU time on a machine shared with other work (see
`timed_call`). CUDA times use CUDA events around synchronised calls.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from costmodels.analytic import count_metrics
from costmodels.host import device_name, host_info, pick_probe, time_probe
from costmodels.signature import enumerate_signatures
from costmodels.table import CostTable, TableMeta
from costmodels.targets import Target, op_module, torch_threads
from costmodels.targets import torch_runtime_signature as runtime_signature
from costmodels.timing import check_clock, time_interleaved, timed_call
from supernet.space import SearchSpace

__all__ = ["build_measured_table", "device_name", "measure_network_latency", "measure_networks",
           "op_module", "runtime_signature", "time_interleaved", "timed_call", "torch_threads"]


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


def protocol(batch: int, threads: int | None, clock: str, warmup: int, repeats: int,
             burst: int = 1) -> str:
    """How a table was timed, in words (recorded in its metadata)."""
    each = "once" if burst == 1 else f"{burst} times in a row, the last timed,"
    return (f"batch {batch}, {threads or 'default'} thread(s), {clock} clock, {warmup} warm-up "
            f"+ {repeats} interleaved rounds (each call {each} per round, shuffled), median; "
            "entry = layer run minus its baseline run (torch: an identity run; onnxruntime: "
            "the layer's prefix alone), the identity run added once per network")


def build_measured_table(space: SearchSpace, device: str | torch.device = "cpu", batch: int = 1,
                         threads: int = 1, warmup: int = 10, repeats: int = 100,
                         space_file: str | None = None, progress: bool = True,
                         seed: int = 0, clock: str = "wall", burst: int = 1) -> CostTable:
    """Time every runtime shape of ``space`` on target ``device`` (``cpu``, ``cuda[:N]`` or
    ``onnxruntime``) in ``warmup`` + ``repeats`` interleaved rounds.

    Entries hold ``latency_ms`` (the layer's own time: its run minus the overhead run), its
    relative ``latency_spread`` and the count metrics of `analytic.count_metrics`; every
    signature that maps to one runtime shape shares its time. The table records its host,
    protocol and the raw times of a few probe shapes (`costmodels.host`).
    """
    target = Target(str(device), threads)
    check_clock(clock, target.device, threads)
    signatures = sorted(enumerate_signatures(space, batch))
    shapes = sorted({target.runtime_signature(s) for s in signatures})
    shape_in = (batch, space.input_channels, space.input_size, space.input_size)
    plan = target.entry_calls(tqdm(shapes, desc=f"preparing {target.kind} layers",
                                   disable=not progress), space.act, shape_in, seed)
    with target.running():
        raw = time_interleaved(plan.calls, target.device, warmup, repeats, seed, progress,
                               clock, [burst] * len(plan.calls))
    overhead, timed = plan.entries(raw)
    results = list(timed.values())
    entries = {}
    for s in signatures:
        latency, spread = timed[target.runtime_signature(s)]
        entries[s.key] = {**count_metrics(s), "latency_ms": latency, "latency_spread": spread}
    thread_count = threads if target.device.type == "cpu" else None
    meta = TableMeta(
        target=target.name, device=device_name(target.device), method="measured",
        torch_version=torch.__version__, batch=batch, threads=thread_count, warmup=warmup,
        repeats=repeats, clock=clock, burst=burst,
        spread=statistics.median(r[1] for r in results),
        host=host_info(target.device, thread_count), protocol=protocol(
            batch, thread_count, clock, warmup, repeats, burst),
        probe=time_probe(target.name, threads, clock, list(pick_probe(
            {shape.key: t for shape, (t, _) in timed.items()})), space.act, seed=seed),
        notes=(f"{target.runtime}: {len(shapes)} runtime shapes timed for {len(signatures)} "
               f"signatures; {_bits_note(target)}"),
    ).for_space(space, space_file)
    return CostTable(entries, meta, overhead={"latency_ms": overhead})


def _bits_note(target: Target) -> str:
    if target.kind == "onnxruntime":
        return ("layers with quantized weights and activations run int8 QDQ kernels (4 bits "
                "as int8: onnxruntime has no 4-bit conv kernels), all others float kernels, "
                "so each shape was timed once per kernel kind")
    return ("weight bits do not change the float latency of baked fake-quantized weights, and "
            "4- and 8-bit activation quantizers run the same ops, so each shape was timed once "
            "and its value filled into every bit-width variant")
