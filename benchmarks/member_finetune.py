"""Figure 2's members with the shared weights and fine-tuned on their own copy.

Reads the family that `one_vs_many` exported (``<out>/shared/export/family.pt``), so it runs
after that figure, in the same ``--out``. Each member named in ``--finetune`` is scored twice,
its batch norms recalibrated and classifiers refit each time, as ``hwnas export`` does: with
the shared weights, and after ``--steps`` batches on its own copy, distilled from the family's
dearest member (`nas.family.finetune.finetune_members`, what ``hwnas export --finetune`` ships:
the members train side by side, one teacher pass a batch). The fine-tune's CPU seconds are set
against the search's and the twins'. Where the member's from-scratch twin is in the cache, its
accuracy is set beside them; no twin is trained here.

    python -m benchmarks.member_finetune --full --threads 1 --epochs 10 \\
        --limit-train-batches 328 --finetune m0,m1,m2 --out runs/<the one_vs_many run>
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import datamodule, main, mode, options, write_result
from benchmarks.training import exported_family, family_path, twin_path

NAME = "member_finetune"


def run(quick: bool, out_dir: str | Path, *, members: str | None, steps: int, lr: float,
        **kwargs: Any) -> dict:
    from nas.family.finetune import dearest, finetune_members
    from nas.family.recalibrate import evaluate_member

    opts, m = options(**kwargs), mode(quick)
    info, family, net = exported_family(NAME, out_dir)
    top = dearest(family.members, family.metric)
    by_name = {r.name: r for r in family.members}
    names = members.split(",") if members else [r.name for r in family.members if r is not top]
    odd = [n for n in names if n not in by_name or n == top.name]
    if odd:
        raise SystemExit(f"--finetune: {odd} are not members cheaper than the teacher "
                         f"{top.name} (the family has {list(by_name)})")
    dm = datamodule(quick, opts.data_dir)
    kw = {"recal_batches": m.recal_batches, "classifier_batches": m.classifier_batches,
          "latency_device": None}

    def score(weights, config):
        return evaluate_member(weights, config, dm.weights_dataloader(), dm.test_dataloader(),
                               **kw).accuracy[-1]

    teacher = evaluate_member(net, top.config, dm.weights_dataloader(), dm.test_dataloader(),
                              **kw)
    start = time.process_time()  # side by side, as the export does: one teacher pass a batch
    copies = finetune_members(net, [by_name[n].config for n in names], teacher.module,
                              dm.weights_dataloader(), steps=steps, lr=lr,
                              weight_decay=info["recipe"]["weight_decay"],
                              progress=opts.progress)
    tuned_s = time.process_time() - start
    rows = []
    for name, own in zip(names, copies, strict=True):
        rec = by_name[name]
        acc = {"shared": score(net, rec.config), "tuned": score(own, rec.config)}
        twin = twin_path(quick, out_dir, rec.config, info["recipe"])
        twin_doc = json.loads(twin.read_text()) if twin.is_file() else None
        twin_acc = None if twin_doc is None else twin_doc["accuracy"][-1]
        rows.append({
            "name": name, "latency_ms": rec.costs["latency_ms"], "steps": steps,
            "shared_accuracy": acc["shared"], "tuned_accuracy": acc["tuned"],
            "gain_pp": 100 * (acc["tuned"] - acc["shared"]),
            "scratch_accuracy": twin_acc,
            "scratch_cpu_s": None if twin_doc is None else twin_doc["timing"]["cpu_s"],
            "shared_gap_pp": None if twin_acc is None else 100 * (acc["shared"] - twin_acc),
            "tuned_gap_pp": None if twin_acc is None else 100 * (acc["tuned"] - twin_acc),
        })
        print(f"{name}: shared {100 * acc['shared']:.2f} %, fine-tuned "
              f"{100 * acc['tuned']:.2f} %"
              + ("" if twin_acc is None else f", twin {100 * twin_acc:.2f} %"), flush=True)
    search_s = info["timing"]["cpu_s"]
    twins_s = [r["scratch_cpu_s"] for r in rows]
    gaps = [r["tuned_gap_pp"] for r in rows if r["tuned_gap_pp"] is not None]
    headline = {"teacher": top.name, "teacher_accuracy": teacher.accuracy[-1],
                "search_cpu_s": search_s, "finetune_cpu_s": tuned_s,
                "search_plus_finetune_cpu_s": search_s + tuned_s, "twins": float(len(gaps))}
    if gaps and None not in twins_s:
        headline["their_twins_cpu_s"] = sum(twins_s)
    if gaps:
        headline["worst_tuned_gap_pp"] = min(gaps)
    settings = {"members": names, "steps": steps, "lr": lr, "family": str(family_path(out_dir)),
                "recal_batches": m.recal_batches, "classifier_batches": m.classifier_batches,
                "epochs": m.epochs, "limit_train_batches": m.limit}
    return write_result(out_dir, NAME, quick, opts, settings, {"members": rows}, headline)


def cli(argv: list[str] | None = None) -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--finetune", default=None, metavar="M0,M1",
                       help="members to fine-tune (default: all but the teacher)")
    extra.add_argument("--steps", type=int, default=1000, help="fine-tune batches each (1000)")
    extra.add_argument("--lr", type=float, default=0.02, help="SGD learning rate (0.02)")
    argv = sys.argv[1:] if argv is None else argv
    args, rest = extra.parse_known_args(argv)
    if args.steps < 1:
        extra.error(f"--steps: must be at least 1, got {args.steps}")
    return main(NAME, lambda quick, out_dir, **kw: run(
        quick, out_dir, members=args.finetune, steps=args.steps, lr=args.lr, **kw), rest,
        whole_argv=argv)


if __name__ == "__main__":
    raise SystemExit(cli())
