"""Run-time adaptation: stream inputs through a family under a per-inference deadline or a
falling energy budget.

`run_stream` times each inference with an injectable clock (so tests use a fake one), feeds the
measured latency (or the member's energy against the battery's budget) to a `BudgetController`
that picks the member, and returns a `Trace` of what happened: per inference the member in use,
its latency against the deadline, whether the prediction was right, and what the controller
itself cost. `deploy.load` supplies the scenarios (`SCENARIOS`). The oracle policy knows the
load: it uses, per load level, the member measured best there before the stream. Needs neither
Lightning nor wandb.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from deploy.controller import BudgetController
from deploy.load import SCENARIOS, LoadGenerator, battery_power, load_level
from deploy.policies import (
    Clock,
    EnergyPricer,
    best_member,
    default_power,
    measure_levels,
    measure_members,
    member_accuracy,
    member_energy,
    offline_pick,
    oracle_picks,
)
from deploy.runtime import FamilyRuntime

__all__ = ["SCENARIOS", "LoadGenerator", "Step", "Trace", "battery_power", "load_level",
           "measure_levels", "measure_members", "member_accuracy", "member_energy",
           "offline_pick", "oracle_picks", "plot_trace", "run_policy", "run_stream",
           "stream_inputs"]

Chooser = Callable[[float, int], str]  # (s since the start, load level) → member
POLICIES = ("controller", "largest", "fixed", "oracle")
RECOVERY_RUN = 5  # in-deadline inferences in a row that end a recovery
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # as nas.data normalises for training


@dataclass(frozen=True)
class Step:
    """One inference: when it started (s since the stream began), the member that ran, its
    latency (ms), whether it missed the deadline, the prediction's correctness (None without
    labels), the controller's own time (ms), the load level during it and, under an energy
    budget, the member's energy and the budget per inference (mJ; nan otherwise)."""

    t_s: float
    member: str
    latency_ms: float
    deadline_ms: float
    missed: bool
    correct: bool | None
    overhead_ms: float
    load: float
    energy_mj: float = math.nan
    energy_budget_mj: float = math.nan


@dataclass
class Trace:
    """Every step of a stream, and the summary a person compares policies by."""

    steps: list[Step] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def switches(self) -> int:
        return sum(a.member != b.member for a, b in itertools.pairwise(self.steps))

    def recoveries(self, run: int = RECOVERY_RUN) -> list[tuple[float, int]]:
        """Per rise of the load level: (ms, inferences) from the first inference at the new
        level to the first of ``run`` in a row under the deadline (the end of the stream if
        none comes; 0 if the deadline was never missed)."""
        out = []
        steps = self.steps
        for i in range(1, len(steps)):
            if steps[i].load <= steps[i - 1].load:
                continue
            j, streak = i, 0
            for k in range(i, len(steps)):
                streak = 0 if steps[k].missed else streak + 1
                if streak == run:
                    j = k - run + 1
                    break
            else:
                j = len(steps) - 1
            out.append(((steps[j].t_s - steps[i].t_s) * 1e3, j - i))
        return out

    def summary(self) -> dict[str, float]:
        """miss_rate in [0, 1]; accuracy in [0, 1] (nan without labels); switches per second;
        the policy's own time per inference (µs: mean, and median, which a preemption landing
        in it does not move); inferences; duration (s); mean recovery after
        a rise of the load (ms, inferences; nan without one); under an energy budget, the
        share of inferences over it and the mean energy per inference (mJ; nan otherwise)."""
        n = len(self.steps)
        if n == 0:
            raise ValueError("the trace is empty: the stream yielded no inputs")
        labelled = [s.correct for s in self.steps if s.correct is not None]
        rec = self.recoveries()
        budgeted = [s for s in self.steps if not math.isnan(s.energy_budget_mj)]
        return {
            "inferences": n,
            "miss_rate": sum(s.missed for s in self.steps) / n,
            "accuracy": sum(labelled) / len(labelled) if labelled else math.nan,
            "switches_per_s": self.switches / self.duration_s if self.duration_s > 0 else 0.0,
            "overhead_us": 1e3 * sum(s.overhead_ms for s in self.steps) / n,
            "overhead_median_us": 1e3 * float(np.median([s.overhead_ms for s in self.steps])),
            "duration_s": self.duration_s,
            "recovery_ms": float(np.mean([r[0] for r in rec])) if rec else math.nan,
            "recovery_inferences": float(np.mean([r[1] for r in rec])) if rec else math.nan,
            "energy_over_rate": (sum(s.energy_mj > s.energy_budget_mj * (1 + 1e-9)
                                     for s in budgeted) / len(budgeted)
                                 if budgeted else math.nan),
            "energy_mj": (float(np.mean([s.energy_mj for s in budgeted]))
                          if budgeted else math.nan),
        }

    def summary_line(self) -> str:
        s = self.summary()
        acc = "n/a" if math.isnan(s["accuracy"]) else f"{100 * s['accuracy']:.2f}%"
        line = (f"deadline misses {100 * s['miss_rate']:.2f}% of {s['inferences']} inferences, "
                f"accuracy {acc}, {s['switches_per_s']:.2f} switches/s, "
                f"controller overhead {s['overhead_us']:.1f} µs/inference")
        if not math.isnan(s["recovery_ms"]):
            line += (f", recovery {s['recovery_ms']:.0f} ms "
                     f"({s['recovery_inferences']:.0f} inferences) after a load rise")
        if not math.isnan(s["energy_over_rate"]):
            line += (f", over the energy budget {100 * s['energy_over_rate']:.2f}% "
                     f"(mean {s['energy_mj']:.3g} mJ/inference)")
        return line

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"summary": self.summary(), "duration_s": self.duration_s,
                                          "steps": [asdict(s) for s in self.steps]}))

    @classmethod
    def from_json(cls, path: str | Path) -> Trace:
        """Read back what `to_json` wrote (to plot or compare a run again)."""
        data = json.loads(Path(path).read_text())
        return cls([Step(**s) for s in data["steps"]],
                   data.get("duration_s", data["summary"]["duration_s"]))


def run_stream(runtime: FamilyRuntime, inputs: Iterable, deadline_ms: float,
               controller: BudgetController | None = None, clock: Clock = time.perf_counter,
               duration_s: float | None = None, load: LoadGenerator | None = None,
               choose: Chooser | None = None, energy_mj: Mapping[str, float] | None = None,
               power_mw: Callable[[float], float] | None = None,
               sleep: Callable[[float], None] = time.sleep) -> Trace:
    """Run each input (a tensor, or an ``(x, y)`` pair with labels) through the current member
    at the last exit; after each, the controller (if any) sees the measured latency (ms) and may
    switch the member. Stops when the inputs end or after ``duration_s`` (by ``clock``).
    ``load``, if given, is moved along its schedule before each inference; ``choose``, if given,
    picks the member before each from the time and load level (the oracle).

    With ``power_mw`` (an energy budget per second at a time) inputs arrive one per
    ``deadline_ms`` (the frame period, waited for with ``sleep``), the budget per inference is
    ``power_mw(t) × deadline_ms / 1000`` (mJ) and the controller sees the member's energy
    (``energy_mj``, mJ per inference) against it instead of the latency."""
    if not deadline_ms > 0:
        raise ValueError(f"deadline_ms: must be > 0, got {deadline_ms}")
    if power_mw is not None and energy_mj is None:
        raise ValueError("energy_mj: an energy budget needs each member's energy per inference")
    if controller is not None and power_mw is None:
        controller.budget = float(deadline_ms)
    period_s = deadline_ms / 1e3
    trace = Trace()
    start = clock()
    now = start
    with torch.inference_mode():
        for k, item in enumerate(inputs):
            x, y = item if isinstance(item, tuple | list) else (item, None)
            if power_mw is not None and now - start < k * period_s:  # the next frame's arrival
                sleep(k * period_s - (now - start))
                now = clock()
            elapsed = now - start
            if duration_s is not None and elapsed >= duration_s:
                break
            level = load.update(elapsed) if load is not None else 0
            budget_mj = power_mw(elapsed) * period_s if power_mw is not None else math.nan
            t_pick = clock()
            if choose is not None:
                runtime.set_member(choose(elapsed, level))
            member = runtime.current
            t0 = clock()
            logits = runtime(x)[-1]
            t1 = clock()
            latency_ms = (t1 - t0) * 1e3
            energy = energy_mj[member] if energy_mj is not None else math.nan
            if controller is not None:
                if power_mw is None:
                    controller.update(latency_ms)
                else:
                    controller.update(energy, budget=budget_mj)
            now = clock()
            correct = None if y is None else bool((logits.argmax(-1) == y).all())
            trace.steps.append(Step(t0 - start, member, latency_ms, float(deadline_ms),
                                    latency_ms > deadline_ms, correct,
                                    (now - t1 + t0 - t_pick) * 1e3, level, energy, budget_mj))
    trace.duration_s = now - start
    return trace


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


def run_policy(runtime: FamilyRuntime, policy: str, deadline_ms: float, inputs: Iterator,
               duration_s: float, scenario: str = "none", peak: int = 2,
               offline: dict[str, float] | None = None,
               by_level: Mapping[int, Mapping[str, list[float]]] | None = None,
               energy: Mapping[str, float] | None = None,
               power_mw: tuple[float, float] | None = None, margin: float = 0.1) -> Trace:
    """One stream under ``scenario`` with ``policy``: the controller, always the largest
    member, the member picked offline for the deadline from ``offline`` latencies, or the
    oracle (per load level the best member in ``by_level`` latencies; under the battery, the
    best member whose energy fits the budget). What is not given is measured here."""
    if policy not in POLICIES:
        raise ValueError(f"policy: must be one of {POLICIES}, got {policy!r}")
    load_level(scenario, 0.0, 1.0, peak)  # validates the name before any measuring
    names, accuracy = runtime.names, member_accuracy(runtime)
    offline = offline or measure_members(runtime, inputs)
    power = None
    if scenario == "battery":
        energy = energy or member_energy(runtime)
        start_mw, end_mw = power_mw or default_power(energy, deadline_ms)

        def power(t_s: float) -> float:
            return battery_power(t_s, duration_s, start_mw, end_mw)
    controller, choose = None, None
    runtime.set_member(names[-1])
    if policy == "fixed":
        runtime.set_member(offline_pick(offline, deadline_ms))
    elif policy == "controller" and power is not None:
        controller = BudgetController(runtime, power(0.0) * deadline_ms / 1e3, "energy_mj",
                                      costs=energy)
    elif policy == "controller":
        controller = BudgetController(runtime, deadline_ms, costs=offline, margin=margin,
                                      up_window=100, quantile=0.98)
    elif policy == "oracle" and power is not None:
        def choose(t_s: float, level: int) -> str:
            budget = power(t_s) * deadline_ms / 1e3
            fits = [n for n in names if energy[n] <= budget] or [min(names, key=energy.get)]
            return best_member(fits, accuracy, names)
    elif policy == "oracle":
        by_level = by_level or measure_levels(runtime, inputs, range(peak + 1))
        picks = oracle_picks(by_level, deadline_ms, accuracy)

        def choose(t_s: float, level: int) -> str:
            return picks[level]
    with LoadGenerator(scenario, duration_s, peak) as load:
        return run_stream(runtime, inputs, deadline_ms, controller, duration_s=duration_s,
                          load=load, choose=choose,
                          energy_mj=energy if power is not None else None, power_mw=power)


def plot_trace(trace: Trace, path: str | Path, names: list[str], title: str = "",
               others: Mapping[str, Trace] | None = None, label: str = "this run") -> None:
    """Latency per inference against the deadline, the member in use (also of ``others``, e.g.
    the oracle's, drawn lighter) and the load or, under a battery, the energy budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = trace.steps
    t = [s.t_s for s in steps]
    battery = not math.isnan(steps[0].energy_budget_mj)
    fig, (a, b, c) = plt.subplots(3, 1, sharex=True, figsize=(9, 6),
                                  gridspec_kw={"height_ratios": [3, 1.5, 1.2]})
    a.plot(t, [s.latency_ms for s in steps], ".", ms=2, label="latency")
    a.axhline(steps[0].deadline_ms, color="r", lw=1, label="deadline")
    a.set_ylabel("latency (ms)")
    a.set_yscale("log")
    a.legend(loc="upper right", fontsize=8)
    a.set_title(textwrap.fill(title or trace.summary_line(), 120), fontsize=8)
    for name, other in (others or {}).items():
        b.step([s.t_s for s in other.steps], [names.index(s.member) for s in other.steps],
               where="post", alpha=0.5, lw=1, label=name)
    b.step(t, [names.index(s.member) for s in steps], where="post", color="C0", label=label)
    b.set_yticks(range(len(names)), names, fontsize=7)
    b.set_ylabel("member")
    if others:
        b.legend(loc="upper right", fontsize=7)
    if battery:
        c.plot(t, [s.energy_budget_mj for s in steps], color="r", lw=1, label="budget")
        c.step(t, [s.energy_mj for s in steps], where="post", color="C0", label="used")
        c.set_ylabel("mJ/inference")
        c.legend(loc="upper right", fontsize=7)
    else:
        c.step(t, [s.load for s in steps], where="post", color="gray")
        c.set_ylabel("busy procs")
    c.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command ------------------------------------------------------------------------------
def run_command(argv: list[str], price_energy: EnergyPricer | None = None) -> int:
    """`hwnas run`: stream inputs through a family under a deadline and a load scenario;
    ``price_energy`` prices members' energy for the battery when the family stores none."""
    parser = argparse.ArgumentParser(
        prog="hwnas run", description="Stream inputs through an exported family under a "
        "per-inference deadline while a load scenario competes for the CPU (or under a "
        "falling energy budget: --load battery); the controller switches members. Prints one "
        "line: miss rate, accuracy, switches/s, overhead, recovery, energy.")
    parser.add_argument("--family", required=True, help="family.pt from `hwnas export`")
    parser.add_argument("--deadline-ms", type=float, required=True, help="per-inference "
                        "deadline; under --load battery also the period at which inputs arrive")
    parser.add_argument("--load", default="none", choices=SCENARIOS, help="load scenario")
    parser.add_argument("--policy", default="controller", choices=POLICIES)
    parser.add_argument("--duration-s", type=float, default=20.0, help="length of the run")
    parser.add_argument("--load-procs", type=int, default=2, help="busy processes at peak load")
    parser.add_argument("--power-mw", help="battery: START:END energy budget per second (mW); "
                        "default: from the dearest to the cheapest member at one input per "
                        "deadline")
    parser.add_argument("--energy-target", default="mcu", help="battery: the analytic target "
                        "that prices each member's energy when the family stores none")
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
    power = None
    if args.power_mw:
        try:
            power = tuple(float(v) for v in args.power_mw.split(":"))
        except ValueError:
            power = ()
        if len(power) != 2 or not all(v > 0 for v in power):
            parser.error(f"--power-mw: START:END in mW, both > 0, got {args.power_mw!r}")
    energy = member_energy(runtime, price_energy, args.energy_target) if args.load == "battery" else None
    trace = run_policy(runtime, args.policy, args.deadline_ms, inputs, args.duration_s,
                       args.load, args.load_procs, energy=energy, power_mw=power)
    if args.plot:
        plot_trace(trace, args.plot, runtime.names,
                   f"{args.policy}, load {args.load}: {trace.summary_line()}")
    if args.trace:
        trace.to_json(args.trace)
    print(trace.summary_line())
    return 0
