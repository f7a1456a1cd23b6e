"""`hwnas costs …`: build, import and check cost tables from the command line.

`register(subparsers)` adds the ``costs`` command to an argparse parser; `main(argv)` runs it
standalone (argv without the leading ``costs``). Heavy imports happen only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DEVICE_TARGETS = ("cpu", "cuda", "onnxruntime")
RUNS = Path("runs")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``costs build|import|check`` to ``subparsers``; each sets ``func`` (args → exit code)."""
    costs = subparsers.add_parser("costs", help="build, import and check hardware cost tables",
                                  description="Hardware cost tables: op signature -> metrics.")
    sub = costs.add_subparsers(title="subcommands", dest="costs_command", metavar="SUBCOMMAND")
    sub.required = True
    _add_build(sub)
    _add_import(sub)
    _add_check(sub)
    return costs


def _add_build(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build", help="build a cost table for every layer of a space",
                       description="Measure on this machine (cpu: torch eager; cuda, cuda:N; "
                                   "onnxruntime: the exported integer model on CPU) or price "
                                   "with an analytic roofline preset (edgetpu, fpga, mcu). A "
                                   "measured table records its host, protocol and a probe.")
    b.add_argument("--space", required=True, help="search-space YAML")
    b.add_argument("--target", required=True,
                   help="cpu | cuda[:N] | onnxruntime (measured) or an analytic preset: "
                        "edgetpu, fpga, mcu")
    b.add_argument("--out", required=True, help="table JSON to write")
    b.add_argument("--batch", type=int, default=1, help="samples per inference (default 1)")
    b.add_argument("--threads", type=int, default=1, help="CPU threads when measuring")
    b.add_argument("--warmup", type=int, default=10, help="warm-up runs per layer")
    b.add_argument("--repeats", type=int, default=100,
                   help="timed rounds: each layer once per round (median)")
    b.add_argument("--burst", type=int, default=1,
                   help="calls per timed call, the last one timed (1: each layer cold, among "
                        "all others; more: warm, as inside a network run again and again)")
    b.add_argument("--clock", choices=("wall", "thread"), default="wall",
                   help="wall: elapsed time; thread: CPU time of the timing thread (cpu, "
                        "--threads 1), robust when other processes share the machine")
    b.set_defaults(func=_build)


def _add_import(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("import", help="import a cost table measured elsewhere (CSV, or an "
                                      "HW-NAS-Bench-format block table)",
                       description="CSV columns are documented in costmodels.imports.read_csv; the "
                                   "HW-NAS-Bench format in costmodels.hwnasbench. Duplicate "
                                   "signatures, unknown columns, keys or kinds, wrong units, "
                                   "rows the space never runs and missing signatures are "
                                   "refused.")
    source = i.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="CSV with signature and metric columns")
    source.add_argument("--hw-nas-bench", metavar="FILE",
                        help="HW-NAS-Bench-format JSON of per-block entries (needs --space, "
                             "--device, --metric)")
    i.add_argument("--target", help="name of the hardware a CSV was measured on")
    i.add_argument("--device", default="",
                   help="--hw-nas-bench: the device in the file (e.g. pixel3); --csv: a "
                        "device description for the metadata")
    i.add_argument("--metric", choices=("latency", "energy"),
                   help="--hw-nas-bench: which of the device's metrics")
    i.add_argument("--unit", help="--hw-nas-bench: the metric's unit when the file states none "
                                  "(latency: ms, us, s; energy: mJ, uJ, J)")
    i.add_argument("--out", required=True, help="table JSON to write")
    i.add_argument("--space", help="space YAML the table must cover exactly (checked, then "
                                   "recorded); without it nothing checks coverage")
    i.add_argument("--ignore-unused", action="store_true",
                   help="drop rows the space never runs instead of refusing the table")
    i.set_defaults(func=_import)


def _add_check(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("check", help="predicted vs. measured latency of sampled members",
                       description="Writes fidelity.json and fidelity.png to --out.")
    c.add_argument("--space", required=True, help="search-space YAML")
    c.add_argument("--table", required=True,
                   help="measured table JSON (target cpu, cuda or onnxruntime)")
    c.add_argument("--samples", type=int, default=50, help="random test members (+2 extremes)")
    c.add_argument("--fit-samples", type=int, default=None,
                   help="other members to fit the correction on (default = --samples, 0 = none)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=None, help="default: the table's")
    c.add_argument("--device", default=None,
                   help="default: the table's target (cpu, cuda[:N], onnxruntime)")
    c.add_argument("--repeats", type=int, default=30, help="timed rounds (median per member)")
    c.add_argument("--burst", type=int, default=3,
                   help="a member's timed call follows burst - 1 untimed ones: it runs warm, "
                        "as a deployed member does (entries are timed as the table was)")
    c.add_argument("--clock", choices=("wall", "thread"), default=None,
                   help="default: the table's clock")
    c.add_argument("--out", default=None,
                   help="report folder (default: runs/fidelity/<table name>)")
    c.add_argument("--write-corrected", default=None, metavar="TABLE_JSON",
                   help="also write the table with the linear correction fitted here (on the "
                        "fit members), which searches then apply inside E[cost]")
    c.add_argument("--allow-foreign-table", action="store_true",
                   help="check a table that does not describe this host (another machine, "
                        "or its reference layers drift beyond ±10%%) instead of stopping")
    c.set_defaults(func=_check)


def _space(path: str):
    from supernet import SearchSpace

    return SearchSpace.from_yaml(path)


def _build(args: argparse.Namespace) -> int:
    from costmodels.analytic import PRESETS, build_analytic_table
    from costmodels.profile import build_measured_table

    space = _space(args.space)
    start = time.perf_counter()
    if args.target.split(":")[0] in DEVICE_TARGETS:
        table = build_measured_table(space, args.target, args.batch, args.threads, args.warmup,
                                     args.repeats, space_file=args.space, clock=args.clock,
                                     burst=args.burst)
    elif args.target in PRESETS:
        table = build_analytic_table(space, args.target, args.batch, space_file=args.space)
    else:
        print(f"error: --target {args.target!r}: use cpu, cuda[:N], onnxruntime or one of "
              f"{sorted(PRESETS)}", file=sys.stderr)
        return 2
    table.save(args.out)
    if table.meta.host:
        h = table.meta.host
        print(f"measured on {h.get('gpu') or h.get('cpu')} ({h.get('cores')} cores, "
              f"{h.get('threads') or 'default'} thread(s)), torch {h.get('torch')}, onnxruntime "
              f"{h.get('onnxruntime')}; {table.meta.protocol}")
    print(f"wrote {args.out}: {len(table)} signatures, metrics {list(table.metrics)}, "
          f"id {table.id}, {time.perf_counter() - start:.1f} s")
    return 0


def _import(args: argparse.Namespace) -> int:
    from costmodels.imports import fit_to_space, read_csv
    from costmodels.table import CostTable, TableError, TableMeta

    if args.hw_nas_bench:
        return _import_hw_nas_bench(args)
    if not args.target:
        raise TableError("--target: name the hardware the CSV was measured on (e.g. --target "
                         "my-npu)")
    table = read_csv(args.csv, TableMeta(target=args.target, device=args.device,
                                         method=f"imported from {args.csv}"))
    if args.space:
        space = _space(args.space)
        before = len(table)
        table = fit_to_space(table, space, ignore_unused=args.ignore_unused,
                             template=Path(args.out).with_suffix(".missing.csv"),
                             rerun=_rerun(args, f"--csv {args.csv} --target {args.target}"))
        table = CostTable(table.entries, table.meta.for_space(space, args.space))
        if before > len(table):
            print(f"dropped {before - len(table)} signature(s) space {space.name!r} never runs "
                  "(--ignore-unused)")
    table.save(args.out)
    covers = (f"covers every signature of space {table.meta.space!r}" if args.space else
              "coverage not checked (pass --space)")
    print(f"wrote {args.out}: {len(table)} signatures, metrics {list(table.metrics)}, "
          f"id {table.id}; {covers}")
    return 0


def _rerun(args: argparse.Namespace, source: str) -> str:
    """The command that imports again (what the user ran), for error messages."""
    return (f"hwnas costs import {source} --space {args.space} --out {args.out}"
            + (" --ignore-unused" if args.ignore_unused else ""))


def _import_hw_nas_bench(args: argparse.Namespace) -> int:
    from costmodels.hwnasbench import import_hw_nas_bench
    from costmodels.table import TableError

    lacking = [f"--{n}" for n in ("space", "device", "metric") if not getattr(args, n)]
    if lacking:
        raise TableError(f"--hw-nas-bench needs {' '.join(lacking)} (e.g. --space "
                         "configs/spaces/fbnet_cifar32.yaml --device pixel3 --metric latency)")
    space = _space(args.space)
    unit = f" --unit {args.unit}" if args.unit else ""
    table = import_hw_nas_bench(
        args.hw_nas_bench, args.device, args.metric, space, space_file=args.space,
        unit=args.unit, ignore_unused=args.ignore_unused,
        template=Path(args.out).with_suffix(".missing.json"),
        rerun=_rerun(args, f"--hw-nas-bench {args.hw_nas_bench} --device {args.device} "
                           f"--metric {args.metric}{unit}"))
    table.save(args.out)
    print(f"wrote {args.out}: {len(table)} signatures of space {space.name!r} ({table.meta.notes}"
          f"), metrics {list(table.metrics)}, id {table.id}; covers every member")
    return 0


def _check(args: argparse.Namespace) -> int:
    from costmodels.fidelity import check_fidelity
    from costmodels.host import ForeignTableError, require_host
    from costmodels.table import CostTable

    table = CostTable.load(args.table)
    device = args.device or table.meta.target
    if device.split(":")[0] not in DEVICE_TARGETS:
        print(f"error: table {args.table} is {table.meta.method} for {table.meta.target!r}; "
              "a fidelity check measures on this machine, so it needs a table measured on "
              "cpu, cuda or onnxruntime (or pass --device)", file=sys.stderr)
        return 2
    space = _space(args.space)
    try:
        verdict = require_host(table, space, args.space, args.allow_foreign_table,
                               table_option="--table")
    except ForeignTableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"host check: {'FOREIGN (allowed)' if verdict.foreign else 'ok'}: {verdict.reason}")
    threads = args.threads or table.meta.threads or 1
    clock = args.clock or table.meta.clock or "wall"
    report = check_fidelity(space, table, args.samples, device, threads,
                            args.seed, args.fit_samples, repeats=args.repeats, clock=clock,
                            burst=args.burst)
    out = Path(args.out) if args.out else RUNS / "fidelity" / Path(args.table).stem
    json_path, png_path = report.save(out)
    print(report.summary())
    print(f"wrote {json_path} and {png_path}")
    if args.write_corrected:
        if report.correction is None:
            print("error: --write-corrected needs fit members (--fit-samples >= 3)",
                  file=sys.stderr)
            return 2
        c = report.correction
        corrected = CostTable(table.entries, table.meta, table.overhead,
                              {**table.correction, "latency_ms": {"a": c.a, "b": c.b, "c": c.c}})
        corrected.save(args.write_corrected)
        print(f"wrote {args.write_corrected}: table {corrected.id} = table {table.id} with "
              f"latency_ms ≈ {c.a:.3f}·(Σ layers + overhead) + {c.b:.4f}·layers + {c.c:.3f}")
    a, now = report.additive, report.models.get("table re-timed now + overhead")
    same_run = (f"; entries re-timed in this run: {now.within_10pct:.0%}, τ "
                f"{now.kendall_tau:.3f}" if now else "")
    print(f"table {table.id}: {a.within_10pct:.0%} of {a.n} members within ±10% (goal ≥ 95%), "
          f"Kendall τ {a.kendall_tau:.3f} (goal ≥ 0.95){same_run}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``costs`` standalone: ``main(["build", "--space", …])``."""
    parser = argparse.ArgumentParser(prog="hwnas")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["costs", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
