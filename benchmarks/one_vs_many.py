"""Figure 2 — one run vs many: the family from one search against each member trained alone.

Every member of the exported family (no retraining; batch norms recalibrated by the export)
is compared with its twin: the same config, from a freshly initialised supernet, trained from
scratch with the search's weight recipe for the same epochs and batches, then extracted. Compute
is the training step time of the search (weight + α steps) against the twins' (and an analytic
MACs × samples estimate, a backward pass counted as two forwards).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import mode, options, pyplot, save_axes, write_result
from benchmarks.training import scratch_twin, search_macs, shared_search
from supernet import ArchConfig

NAME = "one_vs_many"
GOAL_PP = 0.5  # a member may trail its twin by at most this many percentage points
GOAL_COMPUTE = 2.0  # family compute ÷ one largest-member run


def run(quick: bool, out_dir: str | Path, **kwargs: Any) -> dict:
    opts = options(**kwargs)
    shared = shared_search(quick, out_dir, opts)
    members = [r for r in shared["records"] if r["kind"] == "member"]
    rows = []
    for r in members:
        twin = scratch_twin(quick, out_dir, opts, ArchConfig.from_dict(r["config"]),
                            shared["recipe"])
        family_acc, twin_acc = r["accuracy"][-1], twin["accuracy"][-1]
        rows.append({
            "name": r["name"], "config": r["config"], "latency_ms": r["costs"]["latency_ms"],
            "measured_latency_ms": r.get("measured_latency_ms"),
            "family_accuracy": family_acc, "scratch_accuracy": twin_acc,
            "gap_pp": 100 * (family_acc - twin_acc),
            "within_goal": 100 * (family_acc - twin_acc) >= -GOAL_PP,
            "scratch_step_wall_s": twin["timing"]["wall_s"],
            "scratch_step_cpu_s": twin["timing"]["cpu_s"],
            "scratch_macs": 3.0 * twin["macs"] * twin["timing"]["samples"],
        })
    largest = rows[-1]  # the family's top member is the space's largest config
    search_t = shared["timing"]
    compute = {
        "family_step_wall_s": search_t["wall_s"], "family_step_cpu_s": search_t["cpu_s"],
        "family_macs": search_macs(shared),
        "scratch_sum_wall_s": sum(r["scratch_step_wall_s"] for r in rows),
        "scratch_sum_cpu_s": sum(r["scratch_step_cpu_s"] for r in rows),
        "scratch_sum_macs": sum(r["scratch_macs"] for r in rows),
        "largest_wall_s": largest["scratch_step_wall_s"],
        "largest_cpu_s": largest["scratch_step_cpu_s"], "largest_macs": largest["scratch_macs"],
    }
    for unit in ("wall_s", "cpu_s", "macs"):
        fam = compute[f"family_{'step_' if unit != 'macs' else ''}{unit}"]
        compute[f"family_over_largest_{unit}"] = fam / compute[f"largest_{unit}"]
        compute[f"family_over_sum_{unit}"] = fam / compute[f"scratch_sum_{unit}"]
    gaps = [r["gap_pp"] for r in rows]
    headline = {
        "members": float(len(rows)),
        "worst_gap_pp": min(gaps), "mean_gap_pp": sum(gaps) / len(gaps),
        "members_within_0.5pp": float(sum(r["within_goal"] for r in rows)),
        "family_over_largest_wall": compute["family_over_largest_wall_s"],
        "family_over_sum_wall": compute["family_over_sum_wall_s"],
        "family_over_largest_macs": compute["family_over_largest_macs"],
    }
    m = mode(quick)
    settings = {"epochs": m.epochs, "limit_train_batches": m.limit, "batch_size": m.batch_size,
                "members": m.members, "recal_batches": m.recal_batches,
                "recipe": shared["recipe"], "search": shared["search_kwargs"],
                "goal_gap_pp": GOAL_PP, "goal_family_over_largest": GOAL_COMPUTE}
    results = {"members": rows, "compute": compute, "search_timing": search_t,
               "search_argmax": shared["argmax"]}
    plot(rows, Path(out_dir) / f"{NAME}.png")
    return write_result(out_dir, NAME, quick, opts, settings, results, headline)


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = [r["latency_ms"] for r in rows]
    ax.plot(x, [100 * r["family_accuracy"] for r in rows], "o-",
            label="family member (one search, BN recalibrated)")
    ax.plot(x, [100 * r["scratch_accuracy"] for r in rows], "s--",
            label="same config trained from scratch")
    for r in rows:
        ax.annotate(r["name"], (r["latency_ms"], 100 * r["family_accuracy"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("table latency (ms, CPU batch 1)")
    ax.set_ylabel("test accuracy (%) at the last exit")
    save_axes(fig, ax, path)


if __name__ == "__main__":
    from benchmarks.common import main

    raise SystemExit(main(NAME, run))
