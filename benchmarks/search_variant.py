"""One search with changed settings, scored on the member configs of a reference family.

For A/B tests of the search itself: the mode's search (``--epochs`` / ``--limit-train-batches``
set its length) with ``--set key=value`` overrides of `nas.search.SupernetSearch`'s arguments,
then the configs of ``--members`` of the family in ``--family`` (e.g. the `one_vs_many` run's
``shared/export/family.pt``) are extracted from the new supernet, their BN recalibrated and
their classifiers refit as the export does, and scored on the test set (last exit), so they
compare one to one with that family's members and their twins. Run it once without ``--set``
for the control. The trained supernet is saved as ``<out>/search_variant.pt``.

    python -m benchmarks.search_variant --full --epochs 5 --limit-train-batches 328 \\
        --family runs/x/shared/export/family.pt --members m0,m1,m2,m7 \\
        --set sandwich_draws=uniform --out runs/variant-uniform
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import datamodule, main, mode, options, write_result
from benchmarks.training import run_search

NAME = "search_variant"


def parse_value(text: str) -> Any:
    """``true``/``false``, a number or a JSON list/dict, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(quick: bool, out_dir: str | Path, *, family: str, members: str,
        overrides: dict[str, Any], **kwargs: Any) -> dict:
    from deploy import FamilyError, read_family
    from nas.family.recalibrate import evaluate_member
    from nas.search import SupernetSearch

    known = set(inspect.signature(SupernetSearch.__init__).parameters) - {"self"}
    odd = sorted(set(overrides) - known)
    if odd:
        raise SystemExit(f"--set: {odd} are not SupernetSearch arguments; known: "
                         f"{sorted(known)}")
    opts, m = options(**kwargs), mode(quick)
    try:
        reference = read_family(family)
    except FamilyError as e:
        raise SystemExit(f"--family: {e}") from None
    names = members.split(",")
    by_name = {r.name: r for r in reference.members}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"--members: {unknown} not in {family} (it has {list(by_name)})")
    search, timing = run_search(quick, out_dir, opts, **overrides)
    torch.save({"state_dict": search.net.state_dict(), "overrides": overrides},
               Path(out_dir) / f"{NAME}.pt")
    dm = datamodule(quick, opts.data_dir)
    net = search.net.cpu().eval()
    rows = []
    for name in names:
        ev = evaluate_member(net, by_name[name].config, dm.weights_dataloader(),
                             dm.test_dataloader(), recal_batches=m.recal_batches,
                             classifier_batches=m.classifier_batches, latency_device=None)
        rows.append({"name": name, "accuracy": ev.accuracy[-1]})
        print(f"{name}: {100 * ev.accuracy[-1]:.2f} %", flush=True)
    settings = {"overrides": overrides, "family": str(family), "epochs": m.epochs,
                "limit_train_batches": m.limit, "recal_batches": m.recal_batches,
                "classifier_batches": m.classifier_batches}
    headline = {f"{r['name']}_accuracy": r["accuracy"] for r in rows}
    return write_result(out_dir, NAME, quick, opts, settings,
                        {"members": rows, "search_timing": timing}, headline)


def cli(argv: list[str] | None = None) -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--family", required=True, help="the reference family.pt")
    extra.add_argument("--members", required=True, help="its members to score, e.g. m0,m1")
    extra.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a SupernetSearch argument for this search (repeatable)")
    argv = sys.argv[1:] if argv is None else argv
    args, rest = extra.parse_known_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            extra.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = parse_value(value)
    return main(NAME, lambda quick, out_dir, **kw: run(
        quick, out_dir, family=args.family, members=args.members, overrides=overrides, **kw),
        rest, whole_argv=argv)


if __name__ == "__main__":
    raise SystemExit(cli())
