"""The search step's schedule: which passes the accuracy needs, at equal epochs.

One search per schedule, each from the same initial weights, data order and seed, for the
mode's epochs and batches (``--epochs`` / ``--limit-train-batches`` shorten them); then the
same fixed members — the largest, the smallest and two random configs of the space — are
extracted from each, their batch norms recalibrated on the mode's recalibration batches, and
scored on the test set (last exit). Step time: the search's training steps, wall and process
CPU time (separate runs in sequence, so a busy machine blurs the ratios; the interleaved
figure is `supernet_overhead`). ``HWNAS_SCHEDULES=name,name`` runs only those schedules.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from benchmarks.common import datamodule, load_space, mode, options, write_result
from benchmarks.training import accuracy_on_test, run_search

NAME = "schedules"
# `nas.search.SupernetSearch` arguments of each schedule, over the mode's search config
SCHEDULES: dict[str, dict[str, Any]] = {
    "default": {},  # the α pass trains the weights too
    "separate_alpha_pass": {"alpha_trains_weights": False},
    "no_random_member": {"sandwich_random": 0},
    "sandwich_start_0.5": {"sandwich_start": 0.5},
    "no_random_sandwich_start_0.5": {"sandwich_random": 0, "sandwich_start": 0.5},
}


def members(quick: bool) -> dict[str, Any]:
    space = load_space(quick)
    rng = random.Random(0)
    return {"largest": space.largest(), "smallest": space.smallest(),
            "random0": space.sample(rng), "random1": space.sample(rng)}


def score(search, quick: bool, data_dir: str | None) -> dict[str, float]:
    """Test accuracy (last exit) of each fixed member, batch norms recalibrated."""
    from nas.family.recalibrate import recalibrate_bn
    from supernet import extract

    dm = datamodule(quick, data_dir)
    out = {}
    for name, config in members(quick).items():
        net = extract(search.net.cpu(), config)
        recalibrate_bn(net, dm.weights_dataloader(), mode(quick).recal_batches)
        out[name] = accuracy_on_test(net, dm, search.search_space.num_classes)[-1]
    return out


def run(quick: bool, out_dir: str | Path, **kwargs: Any) -> dict:
    opts = options(**kwargs)
    rows = {}
    # HWNAS_SCHEDULES=a,b runs some of them (e.g. split over processes on a busy machine)
    for name in os.environ.get("HWNAS_SCHEDULES", ",".join(SCHEDULES)).split(","):
        search, timing = run_search(quick, Path(out_dir) / NAME / name, opts, **SCHEDULES[name])
        rows[name] = {"options": SCHEDULES[name], "timing": timing,
                      "accuracy": score(search, quick, opts.data_dir)}
        print(name, rows[name], flush=True)
    base = rows.get("default")
    headline = {}
    for name, r in rows.items():
        if base is not None:
            r["step_wall_over_default"] = r["timing"]["wall_s"] / base["timing"]["wall_s"]
            r["step_cpu_over_default"] = r["timing"]["cpu_s"] / base["timing"]["cpu_s"]
            r["accuracy_minus_default_pp"] = {
                k: 100 * (a - base["accuracy"][k]) for k, a in r["accuracy"].items()}
            headline[f"{name}_step_cpu_over_default"] = r["step_cpu_over_default"]
            headline[f"{name}_worst_pp"] = min(r["accuracy_minus_default_pp"].values())
    m = mode(quick)
    settings = {"epochs": m.epochs, "limit_train_batches": m.limit, "batch_size": m.batch_size,
                "recal_batches": m.recal_batches,
                "members": {k: v.to_dict() for k, v in members(quick).items()}}
    return write_result(out_dir, NAME, quick, opts, settings, {"schedules": rows}, headline)


if __name__ == "__main__":
    from benchmarks.common import main

    raise SystemExit(main(NAME, run))
