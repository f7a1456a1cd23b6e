"""Figure 4 — budget adherence: where a short search lands against its latency budget.

One short search per budget loss (Lagrangian, hinge, FBNet), per budget (a fraction of the
largest member's table latency, a ceiling) and per seed. Reported: the table cost of the member
that ships (the projection of α onto the budget, `nas.shipping`) ÷ the budget — the goal is
[0.98, 1.00] — beside α's plain argmax and the expected cost E[cost] under softmax(α). Searches start α from uniform with no
warm-up and a larger α learning rate than the long search, so α can move in few steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmarks.common import datamodule, mode, options, pyplot, write_result
from benchmarks.training import run_search

NAME = "budget_adherence"
LOSSES = ("lagrangian", "hinge", "fbnet")
# quick: the tiny space's smallest member costs ~35% of its largest on this CPU table
FRACTIONS = {True: (0.45, 0.6, 0.75), False: (0.25, 0.5, 0.75)}
EPOCHS = 2  # τ anneals over them
SEEDS = {True: (0,), False: (0, 1, 2)}
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
            for seed in SEEDS[quick]:
                budget = {"metric": "latency_ms", "fraction": fraction, "loss": loss}
                if loss == "lagrangian":
                    budget["dual_lr"] = 0.5
                search, timing = run_search(quick, out_dir, opts, epochs=epochs, limit=limit,
                                            batch_size=batch, budget=budget, warmup_epochs=0,
                                            arch_lr=ARCH_LR, seed=seed)
                b = search.budgets[0]
                argmax, shipped = search.alpha.argmax(), search.shipped()
                accuracy = shipped_accuracy(search, shipped, quick, opts, batch, seed)
                with torch.no_grad():
                    expected = float(b.expected(search.alpha.probs()))
                rows.append({
                    "loss": loss, "fraction": fraction, "seed": seed, "budget_ms": b.budget,
                    "shipped_ms": b.expected.concrete(shipped),
                    "shipped_over_budget": b.expected.concrete(shipped) / b.budget,
                    "argmax_ms": b.expected.concrete(argmax),
                    "argmax_over_budget": b.expected.concrete(argmax) / b.budget,
                    "expected_over_budget": expected / b.budget, "lambda": float(b.lam),
                    "shipped_test_acc": accuracy,
                    "largest_ms": b.largest_cost, "smallest_ms": b.smallest_cost,
                    "shipped": shipped.to_dict(), "argmax": argmax.to_dict(),
                    "step_wall_s": timing["wall_s"],
                })
    headline = {}
    for loss in LOSSES:
        for what in ("shipped", "argmax"):
            ratios = [r[f"{what}_over_budget"] for r in rows if r["loss"] == loss]
            headline[f"{loss}_{what}_min_ratio"] = min(ratios)
            headline[f"{loss}_{what}_max_ratio"] = max(ratios)
        headline[f"{loss}_shipped_in_band"] = sum(
            0.98 <= r["shipped_over_budget"] <= 1.0 for r in rows if r["loss"] == loss)
        headline[f"{loss}_runs"] = sum(r["loss"] == loss for r in rows)
        accs = [r["shipped_test_acc"] for r in rows if r["loss"] == loss]
        headline[f"{loss}_shipped_acc_min"], headline[f"{loss}_shipped_acc_max"] = min(accs), max(accs)
    settings = {"losses": list(LOSSES), "fractions": list(FRACTIONS[quick]), "epochs": epochs,
                "limit_train_batches": limit, "batch_size": batch, "arch_lr": ARCH_LR,
                "warmup_epochs": 0, "seeds": list(SEEDS[quick]), "space": str(mode(quick).space_file.name),
                "other": "the rest of configs/search/{tiny,fmnist}.yaml's model section"}
    plot(rows, Path(out_dir) / f"{NAME}.png")
    return write_result(out_dir, NAME, quick, opts, settings, {"runs": rows}, headline)


def shipped_accuracy(search, shipped, quick: bool, opts, batch: int, seed: int) -> float:
    """Top-1 test accuracy (last exit) of the shipped member, extracted from the supernet with
    its batch norms recalibrated on 20 training batches — what export would ship."""
    from nas.family.recalibrate import evaluate_member

    dm = datamodule(quick, opts.data_dir, batch, seed)
    ev = evaluate_member(search.net.cpu().eval(), shipped, dm.weights_dataloader(),
                         dm.test_dataloader(), recal_batches=20, latency_device=None)
    return float(ev.accuracy[-1])


def plot(rows: list[dict], path: Path) -> None:
    """Shipped cost ÷ budget per loss and budget, one dot per seed, the band shaded; the
    argmax as hollow dots for comparison."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    fractions = sorted({r["fraction"] for r in rows})
    width = 0.8 / len(LOSSES)
    ax.axhspan(0.98, 1.0, color="tab:green", alpha=0.2, label="band [0.98, 1.00]")
    for i, loss in enumerate(LOSSES):
        for j, f in enumerate(fractions):
            runs = [r for r in rows if r["loss"] == loss and r["fraction"] == f]
            x = j + (i - 1) * width
            ax.scatter([x] * len(runs), [r["shipped_over_budget"] for r in runs], s=22,
                       color=f"C{i}", label=loss if j == 0 else None, zorder=3)
            ax.scatter([x + width / 3] * len(runs), [r["argmax_over_budget"] for r in runs],
                       s=18, facecolors="none", edgecolors=f"C{i}", zorder=2,
                       label="argmax (not shipped)" if i == j == 0 else None)
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xticks(range(len(fractions)), [f"{f:.0%}" for f in fractions])
    ax.set_xlabel("budget (share of the largest member's table latency)")
    ax.set_ylabel("table latency ÷ budget")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    from benchmarks.common import main

    raise SystemExit(main(NAME, run))
