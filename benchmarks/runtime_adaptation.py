"""Run-time adaptation — a family holding a per-inference deadline under changing CPU load, and a
falling energy budget.

Before the streams, in this process: every member's latency unloaded (medians: the offline
pick and the controller's reference costs) and under each load level 0…peak (the oracle's
table), and every member's energy per inference from an analytic table. Then for each scenario
(none, step, ramp, periodic, battery) the same Fashion-MNIST test stream runs under four
policies, one after another: always the largest member, the member picked offline for the
deadline (largest whose unloaded median latency fits), the `BudgetController`, and the oracle
(per load level, the most accurate member measured to miss at most 1% there; under the
battery, the most accurate member whose energy fits the budget). Per run: deadline-miss rate,
accuracy, switches/s, the policy's own time per inference, recovery after a load rise and, under
the battery, the share of inferences over the energy budget. Writes a markdown table, a JSON of
the summaries, every trace (JSON) and a plot per scenario of the controller's run with the
oracle's members.

    python -m benchmarks.runtime_adaptation --family runs/quickstart/export/family.pt \
        --deadline-ms 12 --duration-s 12 --out runs/runtime_adaptation
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from costmodels.analytic import build_analytic_table
from costmodels.expected import table_cost
from deploy import FamilyRuntime
from deploy.adapt import (
    FASHION_MNIST_DIR,
    SCENARIOS,
    measure_levels,
    member_accuracy,
    member_energy,
    offline_pick,
    oracle_picks,
    plot_trace,
    run_policy,
    stream_inputs,
)

POLICIES = ("largest", "fixed", "controller", "oracle")


def price_energy(space, configs, target):
    """mJ per inference of each config from the analytic roofline ``target``."""
    table = build_analytic_table(space, target)
    return {n: table_cost(space, table, c, "energy_mj") for n, c in configs.items()}


def mean_summary(summaries: list[dict[str, float]]) -> dict[str, float]:
    """Each figure averaged over rounds (nan where every round has none); inferences summed."""
    out = {}
    for key in summaries[0]:
        values = [s[key] for s in summaries if not math.isnan(s[key])]
        out[key] = (sum(values) if key == "inferences" else float(np.mean(values))
                    ) if values else math.nan
    return out


def fmt(value: float, spec: str, scale: float = 1.0) -> str:
    return "–" if math.isnan(value) else format(scale * value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True)
    parser.add_argument("--deadline-ms", type=float, required=True)
    parser.add_argument("--duration-s", type=float, default=12.0, help="per run")
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--margin", type=float, default=0.1, help="the controller's margin")
    parser.add_argument("--energy-target", default="mcu")
    parser.add_argument("--rounds", type=int, default=1, help="runs per scenario and policy, "
                        "the policies' order rotated each round; rows average the rounds")
    parser.add_argument("--level-repeats", type=int, default=150,
                        help="latencies per member and load level for the oracle")
    parser.add_argument("--data-dir", default=str(FASHION_MNIST_DIR))
    parser.add_argument("--out", default="runs/runtime_adaptation")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]  # other users' jobs: this machine is shared
    runtime = FamilyRuntime.load(args.family)
    inputs = stream_inputs(runtime, "auto", Path(args.data_dir))
    levels = range(args.load_procs + 1)
    by_level = measure_levels(runtime, inputs, levels, args.level_repeats)
    offline = {n: float(np.median(v)) for n, v in by_level[0].items()}
    fixed = offline_pick(offline, args.deadline_ms)
    picks = oracle_picks(by_level, args.deadline_ms, member_accuracy(runtime))
    energy = member_energy(runtime, price_energy, args.energy_target)
    head = [f"load average (1 min) at the start: {load_start:.2f}; "
            f"deadline {args.deadline_ms} ms, {args.duration_s:g} s per run, peak load "
            f"{args.load_procs} busy processes, controller margin {args.margin}; offline pick "
            f"{fixed}; oracle per load level: "
            + ", ".join(f"{lv} → {m}" for lv, m in picks.items()), "",
            "| member | stored accuracy (%) | energy (mJ) | "
            + " | ".join(f"latency at load {lv}: median / p99 (ms), misses (%)" for lv in levels)
            + " |", "| --- " * (3 + len(levels)) + "|"]
    for n in runtime.names:
        cells = [f"{np.median(by_level[lv][n]):.2f} / {np.quantile(by_level[lv][n], 0.99):.2f}, "
                 f"{100 * np.mean(np.asarray(by_level[lv][n]) > args.deadline_ms):.0f}"
                 for lv in levels]
        head.append(f"| {n} | {100 * member_accuracy(runtime)[n]:.2f} | {energy[n]:.3g} | "
                    + " | ".join(cells) + " |")
    print("\n".join(head), flush=True)
    lines = [*head, "", "| scenario | policy | miss rate (%) | accuracy (%) | switches/s | "
             "policy µs/inference: median (mean) | recovery ms (inferences) | over energy budget (%) | "
             "inferences |", "| --- " * 9 + "|"]
    lines[0] += f"; {args.rounds} round(s) per row, the policies rotated"
    results = {"deadline_ms": args.deadline_ms, "offline_ms": offline, "oracle": picks,
               "energy_mj": energy, "runs": {}}
    for scenario in args.scenarios.split(","):
        runs: dict[str, list] = {p: [] for p in POLICIES}
        for r in range(args.rounds):
            for policy in POLICIES[r % len(POLICIES):] + POLICIES[:r % len(POLICIES)]:
                trace = run_policy(runtime, policy, args.deadline_ms, inputs, args.duration_s,
                                   scenario, args.load_procs, offline, by_level, energy,
                                   margin=args.margin)
                runs[policy].append(trace)
                trace.to_json(out / f"{scenario}_{policy}_{r}.json")
        traces = {p: t[0] for p, t in runs.items()}
        for policy in POLICIES:
            s = mean_summary([t.summary() for t in runs[policy]])
            results["runs"][f"{scenario}/{policy}"] = s
            rec = ("–" if math.isnan(s["recovery_ms"]) else
                   f"{s['recovery_ms']:.0f} ({s['recovery_inferences']:.0f})")
            row = (f"| {scenario} | {policy} | {100 * s['miss_rate']:.2f} | "
                   f"{fmt(s['accuracy'], '.2f', 100)} | {s['switches_per_s']:.2f} | "
                   f"{s['overhead_median_us']:.1f} ({s['overhead_us']:.0f}) | {rec} | {fmt(s['energy_over_rate'], '.2f', 100)} | "
                   f"{s['inferences']} |")
            lines.append(row)
            print(row, flush=True)
        plot_trace(traces["controller"], out / f"{scenario}_controller.png", runtime.names,
                   f"load {scenario}, deadline {args.deadline_ms} ms, controller: "
                   f"{traces['controller'].summary_line()}", others={"oracle": traces["oracle"]},
                   label="controller")
    lines.append(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
