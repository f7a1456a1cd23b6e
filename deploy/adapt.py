"""Run-time adaptation: stream inputs through a family under a per-inference deadline.

`run_stream` times each inference with an injectable clock (so tests use a fake one), feeds the
measured latency to a `BudgetController` that picks the member, and returns a `Trace` of what
happened: per inference the member in use, its latency against the deadline, whether the
prediction was right, and what the controller itself cost. `LoadGenerator` adds competing
CPU-bound processes on a schedule (`SCENARIOS`) so the loop can be watched holding a deadline
under changing load. Needs neither Lightning nor wandb.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import multiprocessing as mp
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from deploy.controller import BudgetController
from deploy.runtime import FamilyRuntime

Clock = Callable[[], float]  # seconds, monotonic
SCENARIOS = ("none", "step", "ramp", "periodic")
POLICIES = ("controller", "largest", "fixed")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # as nas.data normalises for training


@dataclass(frozen=True)
class Step:
    """One inference: when it started (s since the stream began), the member that ran, its
    latency (ms), whether it missed the deadline, the prediction's correctness (None without
    labels), the controller's own time (ms) and the load level during it."""

    t_s: float
    member: str
    latency_ms: float
    deadline_ms: float
    missed: bool
    correct: bool | None
    overhead_ms: float
    load: float


@dataclass
class Trace:
    """Every step of a stream, and the summary a person compares policies by."""

    steps: list[Step] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def switches(self) -> int:
        return sum(a.member != b.member for a, b in itertools.pairwise(self.steps))

    def summary(self) -> dict[str, float]:
        """miss_rate in [0, 1]; accuracy in [0, 1] (nan without labels); switches per second;
        controller overhead per inference (µs); inferences; duration (s)."""
        n = len(self.steps)
        if n == 0:
            raise ValueError("the trace is empty: the stream yielded no inputs")
        labelled = [s.correct for s in self.steps if s.correct is not None]
        return {
            "inferences": n,
            "miss_rate": sum(s.missed for s in self.steps) / n,
            "accuracy": sum(labelled) / len(labelled) if labelled else math.nan,
            "switches_per_s": self.switches / self.duration_s if self.duration_s > 0 else 0.0,
            "overhead_us": 1e3 * sum(s.overhead_ms for s in self.steps) / n,
            "duration_s": self.duration_s,
        }

    def summary_line(self) -> str:
        s = self.summary()
        acc = "n/a" if math.isnan(s["accuracy"]) else f"{100 * s['accuracy']:.2f}%"
        return (f"deadline misses {100 * s['miss_rate']:.2f}% of {s['inferences']} inferences, "
                f"accuracy {acc}, {s['switches_per_s']:.2f} switches/s, "
                f"controller overhead {s['overhead_us']:.1f} µs/inference")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"summary": self.summary(),
                                          "steps": [asdict(s) for s in self.steps]}))


def run_stream(runtime: FamilyRuntime, inputs: Iterable, deadline_ms: float,
               controller: BudgetController | None = None, clock: Clock = time.perf_counter,
               duration_s: float | None = None, load: LoadGenerator | None = None) -> Trace:
    """Run each input (a tensor, or an ``(x, y)`` pair with labels) through the current member
    at the last exit; after each, the controller (if any) sees the measured latency (ms) and may
    switch the member. Stops when the inputs end or after ``duration_s`` (by ``clock``).
    ``load``, if given, is moved along its schedule before each inference."""
    if not deadline_ms > 0:
        raise ValueError(f"deadline_ms: must be > 0, got {deadline_ms}")
    if controller is not None:
        controller.budget = float(deadline_ms)
    trace = Trace()
    start = clock()
    now = start
    with torch.inference_mode():
        for item in inputs:
            x, y = item if isinstance(item, tuple | list) else (item, None)
            elapsed = now - start
            if duration_s is not None and elapsed >= duration_s:
                break
            level = load.update(elapsed) if load is not None else 0.0
            member = runtime.current
            t0 = clock()
            logits = runtime(x)[-1]
            t1 = clock()
            latency_ms = (t1 - t0) * 1e3
            if controller is not None:
                controller.update(latency_ms)
            now = clock()
            correct = None if y is None else bool((logits.argmax(-1) == y).all())
            trace.steps.append(Step(t0 - start, member, latency_ms, float(deadline_ms),
                                    latency_ms > deadline_ms, correct, (now - t1) * 1e3, level))
    trace.duration_s = now - start
    return trace


# -- competing load ---------------------------------------------------------------------------
def load_level(scenario: str, t_s: float, duration_s: float, peak: int) -> int:
    """Competing busy processes at ``t_s`` of a ``duration_s`` run: none; step (``peak`` in the
    middle third); ramp (0 → peak over the first two thirds, then off); periodic (``peak`` for
    the second half of each sixth)."""
    f = t_s / duration_s if duration_s > 0 else 0.0
    if scenario == "none":
        return 0
    if scenario == "step":
        return peak if 1 / 3 <= f < 2 / 3 else 0
    if scenario == "ramp":
        return min(peak, math.floor(f * 1.5 * (peak + 1))) if f < 2 / 3 else 0
    if scenario == "periodic":
        return peak if (f * 6) % 1 >= 0.5 else 0
    raise ValueError(f"load scenario: must be one of {SCENARIOS}, got {scenario!r}")


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(10_000):
            x += 1


class LoadGenerator:
    """Starts and stops CPU-bound processes to follow `load_level`; a context manager that
    stops them all on exit."""

    def __init__(self, scenario: str, duration_s: float, peak: int = 2):
        load_level(scenario, 0.0, 1.0, peak)  # validates the name
        self.scenario, self.duration_s, self.peak = scenario, duration_s, peak
        self.ctx = mp.get_context("fork")
        self.procs: list[tuple] = []

    def update(self, t_s: float) -> int:
        want = load_level(self.scenario, t_s, self.duration_s, self.peak)
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


# -- inputs and policies ----------------------------------------------------------------------
def fashion_mnist_test(directory: Path = FASHION_MNIST_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """The 10k test images normalised as for training [N, 1, 28, 28] and their labels."""
    def read(name: str, offset: int) -> np.ndarray:
        for path in (directory / name, directory / f"{name}.gz"):
            if path.is_file():
                raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
                return np.frombuffer(raw, dtype=np.uint8, offset=offset)
        raise FileNotFoundError(f"Fashion-MNIST: {name}(.gz) not found in {directory}; install "
                                "the Debian package dataset-fashion-mnist or pass --data-dir")
    images = torch.from_numpy(read("t10k-images-idx3-ubyte", 16).copy()).view(-1, 1, 28, 28)
    labels = torch.from_numpy(read("t10k-labels-idx1-ubyte", 8).astype(np.int64))
    return images.float().div(255).sub(FASHION_MNIST_MEAN).div(FASHION_MNIST_STD), labels


def stream_inputs(runtime: FamilyRuntime, data: str = "auto",
                  data_dir: Path = FASHION_MNIST_DIR, seed: int = 0) -> Iterator:
    """Endless batch-1 inputs: Fashion-MNIST test images with labels when the family takes
    1×28×28 inputs and 10 classes (``data='auto'`` or ``'fmnist'``), else random images."""
    space = runtime.net.space
    fmnist_shaped = (space.input_channels, space.input_size, space.num_classes) == (1, 28, 10)
    if data == "fmnist" or (data == "auto" and fmnist_shaped):
        if not fmnist_shaped:
            raise ValueError("data 'fmnist': the family takes "
                             f"{space.input_channels}x{space.input_size}x{space.input_size} "
                             f"inputs and {space.num_classes} classes; use --data random")
        x, y = fashion_mnist_test(Path(data_dir))
        return itertools.cycle([(x[i:i + 1], y[i:i + 1]) for i in range(len(x))])
    if data not in ("auto", "random"):
        raise ValueError(f"data: must be auto, fmnist or random, got {data!r}")
    g = torch.Generator().manual_seed(seed)
    shape = (64, 1, space.input_channels, space.input_size, space.input_size)
    return itertools.cycle(torch.randn(shape, generator=g).unbind(0))


def latency_metric(runtime: FamilyRuntime) -> str:
    """The per-member cost the controller scales by: measured CPU latency when the family
    stores it, else the table latency."""
    common = set.intersection(*(set(m.costs) for m in runtime.infos.values()))
    for key in ("measured_latency_ms", "latency_ms"):
        if key in common:
            return key
    raise ValueError(f"the family's members store no latency cost (they have {sorted(common)}); "
                     "export it with a latency table")


def measure_members(runtime: FamilyRuntime, inputs: Iterator, repeats: int = 30,
                    clock: Clock = time.perf_counter) -> dict[str, float]:
    """Median batch-1 latency (ms) of every member, interleaved round-robin in this process."""
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
    return {n: float(np.median(v)) for n, v in times.items()}


def offline_pick(latencies_ms: dict[str, float], deadline_ms: float) -> str:
    """The largest member whose unloaded median latency fits the deadline (else the cheapest)."""
    fits = [n for n, v in latencies_ms.items() if v <= deadline_ms]
    return fits[-1] if fits else next(iter(latencies_ms))


def run_policy(runtime: FamilyRuntime, policy: str, deadline_ms: float, inputs: Iterator,
               duration_s: float, scenario: str = "none", peak: int = 2,
               offline: dict[str, float] | None = None) -> Trace:
    """One stream under ``scenario`` with ``policy``: the controller, always the largest
    member, or the member picked offline for the deadline from ``offline`` latencies."""
    if policy not in POLICIES:
        raise ValueError(f"policy: must be one of {POLICIES}, got {policy!r}")
    controller = None
    if policy == "largest":
        runtime.set_member(runtime.names[-1])
    elif policy == "fixed":
        runtime.set_member(offline_pick(offline or measure_members(runtime, inputs), deadline_ms))
    else:
        runtime.set_member(runtime.names[-1])
        controller = BudgetController(runtime, deadline_ms, metric=latency_metric(runtime))
    with LoadGenerator(scenario, duration_s, peak) as load:
        return run_stream(runtime, inputs, deadline_ms, controller, duration_s=duration_s,
                          load=load)


def plot_trace(trace: Trace, path: str | Path, names: list[str], title: str = "") -> None:
    """Latency per inference against the deadline, the member in use and the load, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s for s in trace.steps]
    fig, (a, b, c) = plt.subplots(3, 1, sharex=True, figsize=(9, 6),
                                  gridspec_kw={"height_ratios": [3, 1.5, 1]})
    a.plot(t, [s.latency_ms for s in trace.steps], ".", ms=2, label="latency")
    a.axhline(trace.steps[0].deadline_ms, color="r", lw=1, label="deadline")
    a.set_ylabel("latency (ms)")
    a.set_yscale("log")
    a.legend(loc="upper right")
    a.set_title(title or trace.summary_line(), fontsize=9)
    b.step(t, [names.index(s.member) for s in trace.steps], where="post")
    b.set_yticks(range(len(names)), names, fontsize=7)
    b.set_ylabel("member")
    c.step(t, [s.load for s in trace.steps], where="post", color="gray")
    c.set_ylabel("busy procs")
    c.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command ------------------------------------------------------------------------------
def run_command(argv: list[str]) -> int:
    """`hwnas run`: stream inputs through a family under a deadline and a load scenario."""
    parser = argparse.ArgumentParser(
        prog="hwnas run", description="Stream inputs through an exported family under a "
        "per-inference deadline while a load scenario competes for the CPU; the controller "
        "switches members. Prints one line: miss rate, accuracy, switches/s, overhead.")
    parser.add_argument("--family", required=True, help="family.pt from `hwnas export`")
    parser.add_argument("--deadline-ms", type=float, required=True, help="per-inference deadline")
    parser.add_argument("--load", default="none", choices=SCENARIOS, help="load scenario")
    parser.add_argument("--policy", default="controller", choices=POLICIES)
    parser.add_argument("--duration-s", type=float, default=20.0, help="length of the run")
    parser.add_argument("--load-procs", type=int, default=2, help="busy processes at peak load")
    parser.add_argument("--data", default="auto", choices=("auto", "fmnist", "random"))
    parser.add_argument("--data-dir", default=str(FASHION_MNIST_DIR))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--plot", help="save the latency/member/load plot here (PNG)")
    parser.add_argument("--trace", help="save every step here (JSON)")
    args = parser.parse_args(argv)
    if args.duration_s <= 0:
        parser.error(f"--duration-s: must be > 0, got {args.duration_s}")
    torch.set_num_threads(args.threads)
    runtime = FamilyRuntime.load(args.family)
    inputs = stream_inputs(runtime, args.data, Path(args.data_dir))
    trace = run_policy(runtime, args.policy, args.deadline_ms, inputs, args.duration_s,
                       args.load, args.load_procs)
    if args.plot:
        plot_trace(trace, args.plot, runtime.names,
                   f"{args.policy}, load {args.load}: {trace.summary_line()}")
    if args.trace:
        trace.to_json(args.trace)
    print(trace.summary_line())
    return 0
