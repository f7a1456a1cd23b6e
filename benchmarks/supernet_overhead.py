"""Figure 1 — supernet overhead: what one search step costs against plain training.

In one Lightning search run, after every search step (weight step with the sandwich + α step,
timed from batch start to batch end) the same training batch also runs, in a shuffled order:
- a relaxed weight step: the full-size network under the α distribution (channel masks, depth
  mixing and per-bit-width fake-quantization mixing), on a copy of the supernet;
- a plain training step of the largest member, extracted as a static network.
Ratios are taken per round (same batch, same moment), then the median. Peak memory of one step
of each: CUDA ``max_memory_allocated`` above the level before the step, or on the CPU the peak
of the bytes allocated during the step, from the torch profiler's memory events.
"""

from __future__ import annotations

import copy
import random
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import Clock, Options, mode, options, pyplot, sync, write_result
from benchmarks.training import run_search

NAME = "supernet_overhead"
ROUNDS = {True: (3, 6), False: (10, 10)}  # (warm-up rounds, timed rounds)
# eager kernels against `--model.compile` (the relaxed forward as one compiled graph: minutes
# to build on a CPU, full mode only)
KINDS = {True: ("eager",), False: ("eager", "compiled")}


class PeakMemory:
    """Peak bytes allocated during a block, above the level at its start."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self.absolute = device, 0, None

    def __enter__(self) -> PeakMemory:
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            self.absolute = torch.cuda.max_memory_allocated(self.device)
            self.peak = self.absolute - self.start
            return
        self.prof.__exit__(*exc)
        events = sorted((e for e in self.prof.events() if e.self_cpu_memory_usage),
                        key=lambda e: e.time_range.start)
        level = 0
        for e in events:  # allocations and frees in time order
            level += e.self_cpu_memory_usage
            self.peak = max(self.peak, level)


def weight_step(model: torch.nn.Module, forward: Callable, opt, x, y, recipe) -> None:
    """One weight step as the search takes it: loss over every exit, clipping, SGD."""
    opt.zero_grad(set_to_none=True)
    logits = forward(x)
    loss = sum(F.cross_entropy(z, y, label_smoothing=recipe["label_smoothing"])
               for z in logits) / len(logits)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
    opt.step()


FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


KERNEL_EVENTS = ("hwnas::", "Torch-Compiled Region")  # a native kernel; a compiled graph


def count_ops(prof) -> dict[str, int]:
    """Top-level aten ops of a profiled block (an op called inside another op is not counted),
    plus one per kernel call the dispatcher does not see (a native quantizer kernel, a compiled
    graph: at least one kernel each), and host-device syncs (``aten::_local_scalar_dense``:
    ``.item()``, ``float(t)``...), the reads inside a fused optimizer's kernel apart
    (``optimizer_reads``: on the CPU it reads its own step counter there; on CUDA that counter
    lives on the device, no sync)."""
    ops = syncs = optimizer_reads = 0
    for e in prof.events():
        if e.name == "aten::_local_scalar_dense":
            parent = e.cpu_parent
            while parent is not None and not parent.name.startswith("aten::_fused_"):
                parent = parent.cpu_parent
            syncs += parent is None
            optimizer_reads += parent is not None
        if e.name.startswith(KERNEL_EVENTS):
            ops += 1
            continue
        if not e.name.startswith("aten::"):
            continue
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        ops += parent is None
    return {"ops": ops, "syncs": syncs, "optimizer_reads": optimizer_reads}


class InterleavedSteps(L.Callback):
    """Times the search step and, on the same batch, a relaxed step and a plain step.

    ``kinds`` are compared one per round in turn, for the search step and the relaxed step
    alike: "eager" (the default kernels) and, in the full mode, "compiled"
    (`--model.compile`: the relaxed forward as one compiled graph). The warm-up rounds run
    each side (the search step too, `--model.channels_last`) in both memory
    formats; the timed rounds use each side's faster one.
    """

    def __init__(self, device: torch.device, warmup: int, profile_batch: int,
                 kinds: tuple[str, ...] = ("eager",)):
        self.device, self.warmup, self.profile_batch = device, warmup, profile_batch
        self.kinds = kinds
        self.times: dict[str, list[float]] = {}
        self.memory: dict[str, PeakMemory] = {}
        self.ops: dict[str, dict[str, int]] = {}
        self.trial: dict[str, dict[str, list[float]]] = {}
        self.format: dict[str, str] = {}
        self.compile_ms: float | None = None
        self.rng = random.Random(0)

    def kind(self, batch_idx: int) -> str:
        return self.kinds[batch_idx % len(self.kinds)]

    def suffix(self, batch_idx: int) -> str:
        return "" if self.kind(batch_idx) == "eager" else "_" + self.kind(batch_idx)

    def on_train_start(self, trainer, module) -> None:
        from timm.optim import create_optimizer_v2

        from supernet import SuperNet, extract

        hp = module.hparams
        self.recipe = {"label_smoothing": hp.label_smoothing, "grad_clip": hp.grad_clip}

        def optimizer(model):
            return create_optimizer_v2(model, hp.weight_optimizer, lr=hp.weight_lr,
                                       weight_decay=hp.weight_decay, momentum=0.9)

        self.relaxed = copy.deepcopy(module.net).train()
        self.relaxed_opt = optimizer(self.relaxed)
        # the compiled rounds' relaxed copy as `--model.compile=true` runs the search's own
        self.relaxed_compiled = torch.compile(self.relaxed.forward, dynamic=False)
        space = module.search_space
        torch.manual_seed(1)
        self.plain = extract(SuperNet(space), space.largest()).to(self.device).train()
        self.plain_opt = optimizer(self.plain)

    def compile_up_front(self, module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Compile the relaxed forward (`--model.compile`) up front, in both memory formats:
        the relaxed copy's, and the search's own (its α pass, with α's gradients), so the
        timed rounds see steady state. The relaxed copy's first calls' extra time is the
        compile time."""
        from supernet.fused import use_compiled_kernels

        probs = {k: p.detach() for k, p in module.alpha.probs().items()}
        use_compiled_kernels(True)
        laps = []
        for fmt in (*FORMATS, *FORMATS):
            self.relaxed.to(memory_format=FORMATS[fmt])
            clock = Clock()
            with clock.lap(self.device):
                weight_step(self.relaxed, lambda v: self.relaxed_compiled(v, probs),
                            self.relaxed_opt, x.contiguous(memory_format=FORMATS[fmt]), y,
                            self.recipe)
            laps.append(clock.laps_ms[0])
        self.compile_ms = laps[0] + laps[1] - laps[2] - laps[3]
        self.relaxed.to(memory_format=torch.contiguous_format)
        module.hparams.compile = True
        for fmt in FORMATS:
            module.net.to(memory_format=FORMATS[fmt])
            logits = module.relaxed_forward(x.contiguous(memory_format=FORMATS[fmt]),
                                            module.alpha.distribution(
                                                module.hparams.relaxation, module.tau,
                                                module.generator(0)))
            sum(z.sum() for z in logits).backward()
        module.zero_grad()  # the search's steps start from zero gradients anyway
        set_search_format(module, self.search_format)
        use_compiled_kernels(False)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        from supernet.fused import use_compiled_kernels

        compiled = self.kind(batch_idx) == "compiled"
        use_compiled_kernels(compiled)  # the relaxed copy's steps
        module.hparams.compile = compiled  # the search's own steps (`--model.compile`)
        key = "search" + self.suffix(batch_idx)
        if batch_idx < self.warmup:
            self.search_format = list(FORMATS)[(batch_idx // len(self.kinds)) % 2]
        else:
            self.search_format = self.format.get(key, "channels_last")
        set_search_format(module, self.search_format)
        self.clock = Clock()
        if batch_idx == self.profile_batch:
            self.memory["search"] = PeakMemory(self.device).__enter__()
        if batch_idx >= self.profile_batch + 1:
            self.prof = profile(activities=[ProfilerActivity.CPU]).__enter__()
        self.lap = self.clock.lap(self.device)
        self.lap.__enter__()

    def choose_formats(self) -> None:
        """Each side (the relaxed one per kernel kind) in its faster format from here on."""
        for key, trials in self.trial.items():
            self.format[key] = min(trials, key=lambda f: statistics.median(trials[f]))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.lap.__exit__(None, None, None)
        suffix = self.suffix(batch_idx)
        if batch_idx == self.profile_batch:
            self.memory["search"].__exit__(None, None, None)
        if batch_idx >= self.profile_batch + 1:
            self.prof.__exit__(None, None, None)
            self.ops["search" + suffix] = count_ops(self.prof)
        x, y = batch["train"]
        if batch_idx == 0 and "compiled" in self.kinds:
            self.compile_up_front(module, x, y)
        with torch.no_grad():
            probs = {k: p.detach() for k, p in module.alpha.distribution(
                module.hparams.relaxation, module.tau, module.generator(batch_idx)).items()}
        warm = batch_idx < self.warmup
        keys = {"relaxed": "relaxed" + suffix, "plain": "plain"}
        trial = list(FORMATS)[(batch_idx // len(self.kinds)) % 2]
        fmt = {side: trial if warm else self.format.get(key, "contiguous")
               for side, key in keys.items()}
        for model, side in ((self.relaxed, "relaxed"), (self.plain, "plain")):
            model.to(memory_format=FORMATS[fmt[side]])
        xs = {side: x.contiguous(memory_format=FORMATS[f]) for side, f in fmt.items()}
        relaxed = self.relaxed_compiled if self.kind(batch_idx) == "compiled" else self.relaxed
        steps = {
            "relaxed": lambda: weight_step(self.relaxed, lambda v: relaxed(v, probs),
                                           self.relaxed_opt, xs["relaxed"], y, self.recipe),
            "plain": lambda: weight_step(self.plain, self.plain, self.plain_opt, xs["plain"], y,
                                         self.recipe),
        }
        order = list(steps)
        self.rng.shuffle(order)
        for name in order:
            key = keys[name]
            if batch_idx == self.profile_batch:
                with PeakMemory(self.device) as mem:
                    steps[name]()
                self.memory[name] = mem
                continue
            if batch_idx >= self.profile_batch + 1:
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    steps[name]()
                self.ops[key] = count_ops(prof)
                continue
            clock = Clock()
            with clock.lap(self.device):
                steps[name]()
            if warm and batch_idx >= len(self.kinds):  # not the first rounds (warming up)
                self.trial.setdefault(key, {}).setdefault(fmt[name], []).append(
                    clock.laps_ms[0])
            if not warm:
                self.times.setdefault(key, []).append(clock.laps_ms[0])
        if batch_idx == self.warmup - 1:
            self.choose_formats()
        if self.warmup <= batch_idx < self.profile_batch:
            self.times.setdefault("search" + suffix, []).append(self.clock.laps_ms[0])
        elif len(self.kinds) <= batch_idx < self.warmup:
            self.trial.setdefault("search" + suffix, {}).setdefault(
                self.search_format, []).append(self.clock.laps_ms[0])


def set_search_format(module, fmt: str) -> None:
    """Switch the search module's memory format between steps: its network, and its
    optimizers' state, whose layout fused steps expect to match the parameters'."""
    module.hparams.channels_last = fmt == "channels_last"
    module.net.to(memory_format=FORMATS[fmt])
    for opt in module.trainer.optimizers:
        for p, state in opt.state.items():
            for k, v in list(state.items()):
                if torch.is_tensor(v) and v.shape == p.shape:
                    state[k] = torch.empty_like(p).copy_(v)


def ratio_stats(num: list[float], den: list[float]) -> dict[str, float]:
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2],
            "of_medians": statistics.median(num) / statistics.median(den)}


def paired(times: dict[str, list[float]], key: str, kinds: tuple[str, ...]) -> dict[str, float]:
    """``key``'s time ÷ the plain step's of the same round (rounds alternate ``kinds``)."""
    plain = times["plain"]
    if not key.endswith("_compiled"):
        return ratio_stats(times[key], plain[::len(kinds)][:len(times[key])])
    return ratio_stats(times[key], plain[1::len(kinds)][:len(times[key])])


def run(quick: bool, out_dir: str | Path, **kwargs: Any) -> dict:
    opts: Options = options(**kwargs)
    warmup, rounds = ROUNDS[quick]
    kinds = KINDS[quick]
    timer = InterleavedSteps(opts.device, warmup, profile_batch=warmup + rounds, kinds=kinds)
    # α steps from the first batch on, so every timed search step is the whole step; the
    # last rounds (one per kernel kind) count ops under the profiler
    run_search(quick, out_dir, opts, epochs=1, limit=warmup + rounds + 1 + len(kinds),
               warmup_epochs=0, callbacks=(timer,))
    from supernet.fused import use_compiled_kernels

    use_compiled_kernels(False)
    t = timer.times
    mem = {k: {"peak_bytes": v.peak, "absolute_peak_bytes": v.absolute}
           for k, v in timer.memory.items()}
    ratios = {k: paired(t, k, kinds) for k in t if k != "plain"}
    ops = timer.ops
    headline = {
        "relaxed_over_plain_time": ratios["relaxed"]["median"],
        "search_over_plain_time": ratios["search"]["median"],
        "relaxed_over_plain_peak_memory": mem["relaxed"]["peak_bytes"] / mem["plain"]["peak_bytes"],
        "search_over_plain_peak_memory": mem["search"]["peak_bytes"] / mem["plain"]["peak_bytes"],
        "plain_step_ms": statistics.median(t["plain"]),
        "relaxed_over_plain_ops": ops["relaxed"]["ops"] / ops["plain"]["ops"],
        "search_syncs": ops["search"]["syncs"],
        "search_optimizer_reads": ops["search"]["optimizer_reads"],
    }
    if "compiled" in kinds:
        headline.update({
            "relaxed_compiled_over_plain_time": ratios["relaxed_compiled"]["median"],
            "search_compiled_over_plain_time": ratios["search_compiled"]["median"],
            "relaxed_compiled_over_plain_ops":
                ops["relaxed_compiled"]["ops"] / ops["plain"]["ops"],
            "relaxed_compile_s": timer.compile_ms / 1e3,
        })
    results = {
        "median_ms": {k: statistics.median(v) for k, v in t.items()},
        "times_ms": t, "ratios": ratios, "relaxed_over_plain": ratios["relaxed"],
        "search_over_plain": ratios["search"], "ops": ops, "memory_formats": timer.format,
        "format_trials_ms": {k: {f: statistics.median(v) for f, v in trials.items()}
                             for k, trials in timer.trial.items()},
        "memory": mem, "goal_relaxed_over_plain": 1.1, "goal_ops_ratio": 2.0,
        "goal_search_over_plain": 3.0,
        "goal_met": min(r["median"] for k, r in ratios.items() if k.startswith("relaxed")) <= 1.1,
    }
    from supernet.fused import quant_kernels

    # "eager" rounds run the default activation kernels: native C++ on CPU where they build
    settings = {"batch_size": mode(quick).batch_size, "warmup_rounds": warmup,
                "timed_rounds": rounds, "device": str(opts.device), "kernels": list(kinds),
                # the native kernels are CPU-only: CUDA runs the eager ones by default
                "default_quant_kernels": quant_kernels() if opts.device.type == "cpu"
                else "eager",
                "memory_method": "cuda max_memory_allocated above the pre-step level"
                if opts.device.type == "cuda" else
                "torch.profiler memory events: peak bytes allocated during the step"}
    plot(t, Path(out_dir) / f"{NAME}.png")
    return write_result(out_dir, NAME, quick, opts, settings, results, headline)


def plot(times: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    labels = {"plain": "plain step, largest member", "relaxed": "relaxed weight step",
              "search": "full search step (sandwich + α)"}
    ax.boxplot([times[k] for k in labels], showfliers=False)
    ax.set_xticks(range(1, 4), [labels[k] for k in labels], fontsize=7)
    ax.set_ylabel("ms per step (same batch)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    from benchmarks.common import main

    raise SystemExit(main(NAME, run))
