"""Run-time adaptation — a family holding a per-inference deadline under changing CPU load.

For each load scenario (none, step, ramp, periodic) the same Fashion-MNIST test stream runs
under three policies, one after another in this process: always the largest member, the member
picked offline for the deadline (largest whose unloaded median latency fits), and the
`BudgetController`. Per run: deadline-miss rate, accuracy, switches/s and the controller's own
time per inference. Writes a markdown table, every trace (JSON) and a plot per scenario of the
controller's run.

    python -m benchmarks.runtime_adaptation --family runs/quickstart/export/family.pt \
        --deadline-ms 2 --duration-s 20 --out runs/runtime_adaptation
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from deploy import FamilyRuntime
from deploy.adapt import (
    FASHION_MNIST_DIR,
    SCENARIOS,
    measure_members,
    offline_pick,
    plot_trace,
    run_policy,
    stream_inputs,
)

POLICIES = ("largest", "fixed", "controller")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True)
    parser.add_argument("--deadline-ms", type=float, required=True)
    parser.add_argument("--duration-s", type=float, default=20.0, help="per run")
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--data-dir", default=str(FASHION_MNIST_DIR))
    parser.add_argument("--out", default="runs/runtime_adaptation")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime = FamilyRuntime.load(args.family)
    inputs = stream_inputs(runtime, "auto", Path(args.data_dir))
    offline = measure_members(runtime, inputs)
    fixed = offline_pick(offline, args.deadline_ms)
    lines = [f"deadline {args.deadline_ms} ms, {args.duration_s:g} s per run, peak load "
             f"{args.load_procs} busy processes; unloaded median latency (ms): "
             + ", ".join(f"{n} {v:.2f}" for n, v in offline.items()) + f"; offline pick {fixed}",
             "", "| scenario | policy | miss rate (%) | accuracy (%) | switches/s | "
             "controller µs/inference | inferences |", "| --- | --- | --- | --- | --- | --- | --- |"]
    print(lines[0], flush=True)
    for scenario in args.scenarios.split(","):
        for policy in POLICIES:
            trace = run_policy(runtime, policy, args.deadline_ms, inputs, args.duration_s,
                               scenario, args.load_procs, offline)
            s = trace.summary()
            acc = "n/a" if math.isnan(s["accuracy"]) else f"{100 * s['accuracy']:.2f}"
            row = (f"| {scenario} | {policy} | {100 * s['miss_rate']:.2f} | {acc} | "
                   f"{s['switches_per_s']:.2f} | "
                   f"{s['overhead_us']:.1f} | {s['inferences']} |")
            lines.append(row)
            print(row, flush=True)
            trace.to_json(out / f"{scenario}_{policy}.json")
            if policy == "controller":
                plot_trace(trace, out / f"{scenario}_controller.png", runtime.names,
                           f"load {scenario}, deadline {args.deadline_ms} ms: "
                           f"{trace.summary_line()}")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
