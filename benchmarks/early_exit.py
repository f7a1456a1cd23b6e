"""Early exit — a threshold sweep over the test set with `FamilyRuntime.predict_early_exit`.

The family's largest member (it has every exit) runs stage by stage; a sample leaves at the
first exit whose max-softmax confidence reaches the threshold. Per threshold: accuracy, mean
table cost per sample (the cost of running up to the exit it left at) and the share of samples
leaving at each exit. The last row sends every sample to the last exit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import datamodule, options, pyplot, write_result
from benchmarks.training import shared_search
from deploy import FamilyRuntime

NAME = "early_exit"
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, math.inf)
METRIC = "latency_ms"


@torch.no_grad()
def sweep(runtime: FamilyRuntime, loader, thresholds=THRESHOLDS, metric: str = METRIC
          ) -> list[dict]:
    """One row per threshold over every batch of ``loader``."""
    costs = torch.tensor(runtime.info.exit_costs[metric], dtype=torch.float64)
    n_exits = len(costs)
    rows = []
    for t in thresholds:
        correct, total, cost = 0, 0, 0.0
        counts = torch.zeros(n_exits, dtype=torch.long)
        for x, y in loader:
            out = runtime.predict_early_exit(x, t)
            correct += int((out.logits.argmax(-1) == y).sum())
            total += len(y)
            cost += float(costs[out.exit_index].sum())
            counts += torch.bincount(out.exit_index, minlength=n_exits)
        rows.append({"threshold": None if math.isinf(t) else t,
                     "label": "last exit only" if math.isinf(t) else f"{t:g}",
                     "accuracy": correct / total, f"mean_{metric}": cost / total,
                     "cost_over_full": cost / total / float(costs[-1]),
                     "exit_share": (counts.double() / total).tolist()})
    return rows


def run(quick: bool, out_dir: str | Path, **kwargs: Any) -> dict:
    opts = options(**kwargs)
    shared = shared_search(quick, out_dir, opts)
    runtime = FamilyRuntime.load(Path(shared["export_dir"]) / "family.pt")
    runtime.set_member(runtime.names[-1])
    info = runtime.info
    rows = sweep(runtime, datamodule(quick, opts.data_dir).test_dataloader())
    full = rows[-1]
    best = [r for r in rows[:-1] if r["accuracy"] >= full["accuracy"] - 0.005]
    headline = {
        "full_accuracy": full["accuracy"], f"full_{METRIC}": full[f"mean_{METRIC}"],
        "acc_at_0.9": next(r["accuracy"] for r in rows if r["threshold"] == 0.9),
        "cost_over_full_at_0.9": next(r["cost_over_full"] for r in rows
                                      if r["threshold"] == 0.9),
        "cheapest_within_0.5pp_cost_over_full": min((r["cost_over_full"] for r in best),
                                                    default=1.0),
    }
    settings = {"member": info.name, "config": info.config.to_dict(),
                "exit_stages": list(info.exit_stages), "criterion": "max_softmax",
                "metric": METRIC, "exit_costs": info.exit_costs[METRIC]}
    plot(rows, Path(out_dir) / f"{NAME}.png")
    return write_result(out_dir, NAME, quick, opts, settings, {"sweep": rows}, headline)


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.plot([r[f"mean_{METRIC}"] for r in rows], [100 * r["accuracy"] for r in rows], "o-")
    for r in rows:
        offset = (-40, 6) if r["threshold"] is None else (3, -8)  # clear of the 0.99 label
        ax.annotate(r["label"], (r[f"mean_{METRIC}"], 100 * r["accuracy"]), fontsize=7,
                    xytext=offset, textcoords="offset points")
    ax.set_xlabel("mean table latency per sample (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("early exit: max-softmax threshold sweep", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    from benchmarks.common import main

    raise SystemExit(main(NAME, run))
