"""Figure 2's members with the supernet's shared exit classifiers and with their own, refit.

Reads the family that `one_vs_many` exported (``<out>/shared/export/family.pt``), so it runs
after that figure, in the same ``--out``. Each member is extracted from the family's shared
weights, its batch norms recalibrated on the mode's batches, and scored on the test set twice:
with the exit classifiers the search trained (shared by every member that ends at that exit)
and with its own, refit on the mode's ``classifier_batches`` of its features
(`nas.family.recalibrate.refit_classifiers`, what ``hwnas export`` now does). Where the
member's from-scratch twin is in the cache, its accuracy is set beside them; no twin is
trained here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.common import datamodule, mode, options, write_result
from benchmarks.training import exported_family, family_path, twin_path

NAME = "classifier_refit"


def run(quick: bool, out_dir: str | Path, **kwargs: Any) -> dict:
    from nas.family.recalibrate import evaluate_member, exit_accuracy, refit_classifiers

    opts, m = options(**kwargs), mode(quick)
    info, family, net = exported_family(NAME, out_dir)
    dm = datamodule(quick, opts.data_dir)
    rows = []
    for rec in family.members:
        # one extracted, recalibrated member, scored before and after its refit
        ev = evaluate_member(net, rec.config, dm.weights_dataloader(), dm.test_dataloader(),
                             recal_batches=m.recal_batches, classifier_batches=0,
                             latency_device=None)
        refit_classifiers(ev.module, dm.weights_dataloader(), m.classifier_batches)
        acc = {"shared": ev.accuracy[-1], "refit": exit_accuracy(
            ev.module, dm.test_dataloader(), net.space.num_classes)[-1]}
        twin = twin_path(quick, out_dir, rec.config, info["recipe"])
        twin_acc = json.loads(twin.read_text())["accuracy"][-1] if twin.is_file() else None
        rows.append({
            "name": rec.name, "latency_ms": rec.costs["latency_ms"],
            "shared_accuracy": acc["shared"], "refit_accuracy": acc["refit"],
            "refit_gain_pp": 100 * (acc["refit"] - acc["shared"]),
            "scratch_accuracy": twin_acc,
            "shared_gap_pp": None if twin_acc is None else 100 * (acc["shared"] - twin_acc),
            "refit_gap_pp": None if twin_acc is None else 100 * (acc["refit"] - twin_acc),
        })
        print(f"{rec.name}: shared {100 * acc['shared']:.2f} %, refit {100 * acc['refit']:.2f} %"
              + ("" if twin_acc is None else f", twin {100 * twin_acc:.2f} %"), flush=True)
    gains = [r["refit_gain_pp"] for r in rows]
    gaps = [r["refit_gap_pp"] for r in rows if r["refit_gap_pp"] is not None]
    headline = {"min_refit_gain_pp": min(gains), "max_refit_gain_pp": max(gains),
                "twins": float(len(gaps))}
    if gaps:
        headline["worst_refit_gap_pp"] = min(gaps)
    settings = {"recal_batches": m.recal_batches, "classifier_batches": m.classifier_batches,
                "family": str(family_path(out_dir)), "epochs": m.epochs,
                "limit_train_batches": m.limit}
    return write_result(out_dir, NAME, quick, opts, settings, {"members": rows}, headline)


if __name__ == "__main__":
    from benchmarks.common import main

    raise SystemExit(main(NAME, run))
