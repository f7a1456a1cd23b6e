"""How far apart a member's from-scratch twins land: figure 2's reference, trained again.

Figure 2 sets each family member against one twin (seed 0). A twin trained a second time
differs only in its initial weights (the data, its order and the recipe are the same), yet it
can land a point or two apart; a gap smaller than that spread says nothing. This trains the
twins of the named members with more seeds into figure 2's cache (seed 0 is figure 2's own
twin, reused when there) and sets the family member against their mean and range.

Reads the search `one_vs_many` ran (``<out>/shared``), so it runs in the same ``--out``:

    python -m benchmarks.twin_spread --full --threads 1 --epochs 10 \\
        --limit-train-batches 328 --members 8 --names m0,m1 --seeds 0,1,2 --out runs/<run>
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import main, options, write_result
from benchmarks.training import scratch_twin, shared_search
from supernet import ArchConfig

NAME = "twin_spread"


def spread(family_acc: float, twin_accs: list[float]) -> dict[str, float]:
    """A member against its twins, in percentage points: the twins' mean, standard deviation
    (0 for one twin), range, and the member's gap to their mean."""
    pct = [100 * a for a in twin_accs]
    mean = statistics.fmean(pct)
    return {"twin_mean": mean, "twin_std": statistics.stdev(pct) if len(pct) > 1 else 0.0,
            "twin_min": min(pct), "twin_max": max(pct),
            "gap_to_mean_pp": 100 * family_acc - mean}


def run(quick: bool, out_dir: str | Path, *, names: str | None, seeds: list[int],
        **kwargs: Any) -> dict:
    opts = options(**kwargs)
    shared = shared_search(quick, out_dir, opts)
    members = {r["name"]: r for r in shared["records"] if r["kind"] == "member"}
    wanted = names.split(",") if names else list(members)
    odd = [n for n in wanted if n not in members]
    if odd:
        raise SystemExit(f"--names: {odd} are not members (the family has {list(members)})")
    rows = []
    for name in wanted:
        rec = members[name]
        twins = [scratch_twin(quick, out_dir, opts, ArchConfig.from_dict(rec["config"]),
                              shared["recipe"], seed) for seed in seeds]
        accs = [t["accuracy"][-1] for t in twins]
        row = {"name": name, "family_accuracy": rec["accuracy"][-1], "seeds": seeds,
               "twin_accuracies": accs, "twin_cpu_s": [t["timing"]["cpu_s"] for t in twins],
               **spread(rec["accuracy"][-1], accs)}
        rows.append(row)
        print(f"{name}: family {100 * row['family_accuracy']:.2f} %, twins "
              + ", ".join(f"{100 * a:.2f}" for a in accs)
              + f" % (mean {row['twin_mean']:.2f}, sd {row['twin_std']:.2f}): "
              f"{row['gap_to_mean_pp']:+.2f} pp", flush=True)
    headline = {"worst_gap_to_mean_pp": min(r["gap_to_mean_pp"] for r in rows),
                "widest_twin_range_pp": max(r["twin_max"] - r["twin_min"] for r in rows)}
    return write_result(out_dir, NAME, quick, opts, {"seeds": seeds},
                        {"members": rows}, headline)


def cli(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--names", default=None,
                       help="members, comma-separated (default: every member)")
    extra.add_argument("--seeds", default="0,1,2",
                       help="initialisation seeds of the twins (0: figure 2's own twin)")
    own, rest = extra.parse_known_args(argv)
    try:
        seeds = sorted({int(s) for s in own.seeds.split(",")})
    except ValueError:
        extra.error(f"--seeds: integers separated by commas, got {own.seeds!r}")
    if min(seeds) < 0:
        extra.error(f"--seeds: seeds are 0 or more, got {own.seeds!r}")
    return main(NAME, lambda quick, out, **kw: run(quick, out, names=own.names, seeds=seeds,
                                                  **kw), rest, whole_argv=argv)


if __name__ == "__main__":
    sys.exit(cli())
