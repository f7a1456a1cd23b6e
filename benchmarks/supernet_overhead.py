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
ROUNDS = {True: (2, 6), False: (3, 15)}  # (warm-up rounds, timed rounds)


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


class InterleavedSteps(L.Callback):
    """Times the search step and, on the same batch, a relaxed step and a plain step."""

    def __init__(self, device: torch.device, warmup: int, profile_batch: int):
        self.device, self.warmup, self.profile_batch = device, warmup, profile_batch
        self.times: dict[str, list[float]] = {"search": [], "relaxed": [], "plain": []}
        self.memory: dict[str, PeakMemory] = {}
        self.rng = random.Random(0)

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
        space = module.search_space
        torch.manual_seed(1)
        self.plain = extract(SuperNet(space), space.largest()).to(self.device).train()
        self.plain_opt = optimizer(self.plain)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.clock = Clock()
        if batch_idx == self.profile_batch:
            self.memory["search"] = PeakMemory(self.device).__enter__()
        self.lap = self.clock.lap(self.device)
        self.lap.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.lap.__exit__(None, None, None)
        if batch_idx == self.profile_batch:
            self.memory["search"].__exit__(None, None, None)
        x, y = batch["train"]
        with torch.no_grad():
            probs = {k: p.detach() for k, p in module.arch.distribution(
                module.hparams.relaxation, module.tau, module.generator(batch_idx)).items()}
        steps = {
            "relaxed": lambda: weight_step(self.relaxed, lambda v: self.relaxed(v, probs),
                                           self.relaxed_opt, x, y, self.recipe),
            "plain": lambda: weight_step(self.plain, self.plain, self.plain_opt, x, y,
                                         self.recipe),
        }
        order = list(steps)
        self.rng.shuffle(order)
        for name in order:
            if batch_idx == self.profile_batch:
                with PeakMemory(self.device) as mem:
                    steps[name]()
                self.memory[name] = mem
                continue
            clock = Clock()
            with clock.lap(self.device):
                steps[name]()
            if batch_idx >= self.warmup:
                self.times[name].append(clock.laps_ms[0])
        if self.warmup <= batch_idx < self.profile_batch:
            self.times["search"].append(self.clock.laps_ms[0])


def ratio_stats(num: list[float], den: list[float]) -> dict[str, float]:
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2],
            "of_medians": statistics.median(num) / statistics.median(den)}


def run(quick: bool, out_dir: str | Path, **kwargs: Any) -> dict:
    opts: Options = options(**kwargs)
    warmup, rounds = ROUNDS[quick]
    timer = InterleavedSteps(opts.device, warmup, profile_batch=warmup + rounds)
    # α steps from the first batch on, so every timed search step is the whole step
    run_search(quick, out_dir, opts, epochs=1, limit=warmup + rounds + 1, warmup_epochs=0,
               callbacks=(timer,))
    t = timer.times
    mem = {k: {"peak_bytes": v.peak, "absolute_peak_bytes": v.absolute}
           for k, v in timer.memory.items()}
    relaxed, search = ratio_stats(t["relaxed"], t["plain"]), ratio_stats(t["search"], t["plain"])
    headline = {
        "relaxed_over_plain_time": relaxed["median"],
        "search_over_plain_time": search["median"],
        "relaxed_over_plain_peak_memory": mem["relaxed"]["peak_bytes"] / mem["plain"]["peak_bytes"],
        "search_over_plain_peak_memory": mem["search"]["peak_bytes"] / mem["plain"]["peak_bytes"],
        "plain_step_ms": statistics.median(t["plain"]),
    }
    results = {
        "median_ms": {k: statistics.median(v) for k, v in t.items()},
        "times_ms": t, "relaxed_over_plain": relaxed, "search_over_plain": search,
        "memory": mem, "goal_relaxed_over_plain": 1.3,
        "goal_met": relaxed["median"] <= 1.3,
    }
    settings = {"batch_size": mode(quick).batch_size, "warmup_rounds": warmup,
                "timed_rounds": rounds, "device": str(opts.device),
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
