"""The native activation-quantizer kernels against the eager ones, in the relaxed step.

One process, one thread, interleaved: each round runs (in a shuffled order) a relaxed
forward+backward of the Fashion-MNIST supernet under softmax(α) with the eager activation
kernels, the same with the native ones (their float32 AVX2 loops, and their scalar loops where
the CPU has AVX2), and a plain forward+backward of the largest member
(extracted); ratios relaxed ÷ plain are taken per round, then the median. A profiled step of
each kind gives the activation quantizer's own time (forward and backward nodes), and three
profiled steps of the relaxed (native) and the plain side give where the relaxed step's extra
time goes: each op's self CPU time per step on both sides, largest differences first.

    python -m benchmarks.native_kernels [--rounds 9] [--batch 128] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import FMNIST_SPACE, cpu_model
from nas.arch_params import ArchParameters
from supernet import SearchSpace, SuperNet, extract, native
from supernet.fused import quant_kernels, use_native_kernels

QUANT_OPS = ("MixedActQuant", "MixedActQuantBackward")


def fwd_bwd(model: Callable, x: torch.Tensor, y: torch.Tensor) -> None:
    logits = model(x)
    loss = sum(F.cross_entropy(z, y) for z in logits) / len(logits)
    loss.backward()


def profiled(step: Callable[[], None], repeats: int = 1):
    """The profiler's per-op averages over ``repeats`` runs of ``step`` (totals, not per run)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    return prof.key_averages()


def quant_ms(step: Callable[[], None]) -> dict[str, float]:
    """Milliseconds in the activation quantizer's autograd nodes during one step."""
    out = dict.fromkeys(QUANT_OPS, 0.0)
    for e in profiled(step):
        if e.key in out:
            out[e.key] += e.cpu_time_total / 1e3
    return out


def self_ms(step: Callable[[], None], repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Each op's (self CPU milliseconds, calls) per step, over ``repeats`` profiled steps."""
    return {e.key: (e.self_cpu_time_total / 1e3 / repeats, e.count / repeats)
            for e in profiled(step, repeats)}


def breakdown(relaxed: Callable[[], None], plain: Callable[[], None],
              top: int = 15) -> dict:
    """Where the relaxed step's extra time goes: the ``top`` ops by |relaxed − plain| self
    time per step, and both totals."""
    r, p = self_ms(relaxed), self_ms(plain)
    rows = []
    for op in r.keys() | p.keys():
        (r_ms, r_calls), (p_ms, p_calls) = r.get(op, (0.0, 0)), p.get(op, (0.0, 0))
        rows.append({"op": op, "relaxed_ms": r_ms, "plain_ms": p_ms, "extra_ms": r_ms - p_ms,
                     "relaxed_calls": r_calls, "plain_calls": p_calls})
    rows.sort(key=lambda row: -abs(row["extra_ms"]))
    return {"relaxed_total_ms": sum(ms for ms, _ in r.values()),
            "plain_total_ms": sum(ms for ms, _ in p.values()), "ops": rows[:top]}


def run(rounds: int, warmup: int, batch: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    space = SearchSpace.from_yaml(FMNIST_SPACE)
    net = SuperNet(space).train().to(memory_format=torch.channels_last)
    plain = extract(SuperNet(space), space.largest()).train().to(memory_format=torch.channels_last)
    alpha = ArchParameters(space)
    with torch.no_grad():
        for a in alpha.parameters():
            a.normal_(0, 0.5)
    x = torch.randn(batch, space.input_channels, 28, 28).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, space.num_classes, (batch,))

    lib = native.library()  # built: `run` checks quant_kernels() before any step

    def relaxed(kernels: str) -> Callable[[], None]:
        def step() -> None:
            use_native_kernels(kernels != "eager")
            lib.hwnas_use_avx2(kernels == "native")
            fwd_bwd(lambda v: net(v, alpha.probs()), x, y)
            net.zero_grad(set_to_none=True)
            alpha.zero_grad(set_to_none=True)
        return step

    def plain_step() -> None:
        fwd_bwd(plain, x, y)
        plain.zero_grad(set_to_none=True)

    use_native_kernels(True)
    assert quant_kernels() == "native", "the native kernels did not build here"
    kinds = ("eager", "native", "native_scalar") if lib.hwnas_use_avx2(1) else ("eager", "native")
    steps = {f"relaxed_{k}": relaxed(k) for k in kinds} | {"plain": plain_step}
    rng, times = random.Random(0), {k: [] for k in steps}
    for r in range(warmup + rounds):
        order = list(steps)
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            steps[name]()
            if r >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    ratio = {kind: statistics.median(a / b for a, b in zip(times[f"relaxed_{kind}"],
                                                          times["plain"], strict=True))
             for kind in kinds}
    profiled = {kind: quant_ms(steps[f"relaxed_{kind}"]) for kind in kinds}
    extra = breakdown(steps["relaxed_native"], plain_step)
    use_native_kernels(True)
    lib.hwnas_use_avx2(1)
    return {
        "settings": {"space": FMNIST_SPACE.name, "batch": batch, "rounds": rounds,
                     "warmup": warmup, "threads": 1, "memory_format": "channels_last",
                     "native_scalar": "the native kernels with their AVX2 loops off"},
        "machine": {"cpu": cpu_model(), "torch": torch.__version__},
        "median_ms": {k: statistics.median(v) for k, v in times.items()},
        "relaxed_over_plain": ratio,
        "native_speedup_of_relaxed_step": statistics.median(
            a / b for a, b in zip(times["relaxed_eager"], times["relaxed_native"], strict=True)),
        "act_quant_profiled_ms": profiled,
        "relaxed_native_vs_plain_self_ms": extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result = run(args.rounds, args.warmup, args.batch)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
