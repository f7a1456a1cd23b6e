"""Figure 4 — budget adherence: where a short search lands against its latency budget.

One short search per budget loss (Lagrangian, hinge, FBNet) and per budget (a fraction of the
largest member's table latency). Reported: the table cost of α's argmax ÷ the budget, and the
expected cost E[cost] under softmax(α) ÷ the budget. Searches start α from uniform with no
warm-up and a larger α learning rate than the long search, so α can move in few steps.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import mode, options, pyplot, write_result
from benchmarks.training import run_search

NAME = "budget_adherence"
LOSSES = ("lagrangian", "hinge", "fbnet")
# quick: the tiny space's smallest member costs ~35% of its largest on this CPU table
FRACTIONS = {True: (0.45, 0.6, 0.75), False: (0.25, 0.5, 0.75)}
EPOCHS = 2  # τ anneals over them
BATCH = {True: 32, False: 64}


def batches_per_epoch(quick: bool) -> int:
    """A quarter of the mode's training batches per epoch (at least 4)."""
    return max(mode(quick).limit // 4, 4)
ARCH_LR = 0.05


def run(quick: bool, out_dir: str | Path, **kwargs: Any) -> dict:
    opts = options(**kwargs)
    epochs, limit, batch = EPOCHS, batches_per_epoch(quick), BATCH[quick]
    rows = []
    for loss in LOSSES:
        for fraction in FRACTIONS[quick]:
            budget = {"metric": "latency_ms", "fraction": fraction, "loss": loss}
            if loss == "lagrangian":
                budget["dual_lr"] = 0.5
            search, timing = run_search(quick, out_dir, opts,
                                        epochs=epochs, limit=limit, batch_size=batch,
                                        budget=budget, warmup_epochs=0, arch_lr=ARCH_LR)
            b = search.budgets[0]
            argmax = search.arch.argmax()
            with torch.no_grad():
                expected = float(b.expected(search.arch.probs()))
            cost = b.expected.concrete(argmax)
            rows.append({
                "loss": loss, "fraction": fraction, "budget_ms": b.budget,
                "argmax_ms": cost, "argmax_over_budget": cost / b.budget,
                "expected_over_budget": expected / b.budget, "lambda": float(b.lam),
                "largest_ms": b.largest_cost, "smallest_ms": b.smallest_cost,
                "argmax": argmax.to_dict(), "step_wall_s": timing["wall_s"],
            })
    headline = {}
    for loss in LOSSES:
        ratios = [r["argmax_over_budget"] for r in rows if r["loss"] == loss]
        headline[f"{loss}_mean_abs_dev"] = statistics.mean(abs(v - 1) for v in ratios)
        headline[f"{loss}_max_ratio"] = max(ratios)
    settings = {"losses": list(LOSSES), "fractions": list(FRACTIONS[quick]), "epochs": epochs,
                "limit_train_batches": limit, "batch_size": batch, "arch_lr": ARCH_LR,
                "warmup_epochs": 0, "space": str(mode(quick).space_file.name),
                "other": "the rest of configs/search/{tiny,fmnist}.yaml's model section"}
    plot(rows, Path(out_dir) / f"{NAME}.png")
    return write_result(out_dir, NAME, quick, opts, settings, {"runs": rows}, headline)


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    fractions = sorted({r["fraction"] for r in rows})
    width = 0.8 / len(LOSSES)
    for i, loss in enumerate(LOSSES):
        vals = [next(r["argmax_over_budget"] for r in rows
                     if r["loss"] == loss and r["fraction"] == f) for f in fractions]
        ax.bar([j + (i - 1) * width for j in range(len(fractions))], vals, width, label=loss)
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xticks(range(len(fractions)), [f"{f:.0%}" for f in fractions])
    ax.set_xlabel("budget (share of the largest member's table latency)")
    ax.set_ylabel("argmax table latency ÷ budget")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    from benchmarks.common import main

    raise SystemExit(main(NAME, run))
