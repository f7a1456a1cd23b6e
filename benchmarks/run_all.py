"""Run every benchmark figure and print their headline numbers.

    python benchmarks/run_all.py --quick            # minutes: tiny space, synthetic data
    python benchmarks/run_all.py --full             # Fashion-MNIST, about an hour on 2 cores
    python benchmarks/run_all.py --full --accelerator gpu --only one_vs_many,baselines

Each figure writes ``<out>/<figure>.json`` (and a PNG); this writes ``<out>/summary.json``.
Figures that need a trained family share one search, cached in ``<out>/shared``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import FIGURES  # noqa: E402
from benchmarks.common import (  # noqa: E402
    add_common_args,
    default_out,
    jsonable,
    options_from_args,
    quiet,
)


def format_table(summary: dict) -> str:
    lines = [f"{'figure':<20} {'number':<40} {'value':>12}", "-" * 74]
    for name, entry in summary["figures"].items():
        if "error" in entry:
            lines.append(f"{name:<20} {'FAILED: ' + entry['error']:<53}")
            continue
        for i, (key, value) in enumerate(entry["headline"].items()):
            shown = "-" if value is None else f"{value:12.4g}"
            lines.append(f"{name if i == 0 else '':<20} {key:<40} {shown:>12}")
        lines.append(f"{'':<20} {'(seconds)':<40} {entry['seconds']:12.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run_all.py", description=__doc__.split(
        "\n")[0])
    add_common_args(parser)
    parser.add_argument("--only", default=None,
                        help=f"comma-separated figures (default all: {','.join(FIGURES)})")
    args = parser.parse_args(argv)
    quick = not args.full
    figures = FIGURES if args.only is None else tuple(args.only.split(","))
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        parser.error(f"--only: unknown figures {unknown}; known: {list(FIGURES)}")
    command = "python benchmarks/run_all.py " + " ".join(sys.argv[1:] if argv is None else argv)
    opts = options_from_args(args, command.strip())
    out = Path(args.out or default_out(quick))
    out.mkdir(parents=True, exist_ok=True)
    quiet()
    summary = {"mode": "quick" if quick else "full", "command": opts.command,
               "options": asdict(opts), "figures": {}}
    previous = out / "summary.json"
    if previous.is_file():  # an earlier `--only` run into the same folder: keep its figures
        earlier = json.loads(previous.read_text())
        if earlier.get("mode") == summary["mode"]:
            summary["figures"] = {k: v for k, v in earlier.get("figures", {}).items()
                                  if k not in figures}
    failed = False
    for name in figures:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            doc = module.run(quick, out, **asdict(opts))
            entry = {"headline": doc["headline"], "file": f"{name}.json"}
        except Exception as e:  # one broken figure must not hide the others
            traceback.print_exc()
            entry, failed = {"error": f"{type(e).__name__}: {e}"}, True
        entry["seconds"] = time.perf_counter() - start
        summary["figures"][name] = entry
        (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=1) + "\n")
    print(format_table({"figures": {k: summary["figures"][k] for k in figures}}))
    print(f"results: {out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
