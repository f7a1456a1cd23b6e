"""`hwnas sweep`: run a W&B sweep file with no W&B server, one subprocess per run.

Each run gets its own directory, named by a hash of its parameters, and logs to W&B offline; a
run is finished when its ``result.json`` exists, so rerunning the command resumes a half-done
sweep. The sweep's results are ``sweep_results.json`` and ``sweep_pareto.png`` (accuracy
against table cost, a point a run). The file itself is read by `nas.sweep_file`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nas.pareto import pareto_flags, write_atomic
from nas.sweep_file import (
    PLOT,
    RESULT,
    RESULTS,
    SweepError,
    build_command,
    check_options,
    expand,
    load_sweep,
    run_id,
    search_args,
)


# -- one run ----------------------------------------------------------------------------------
def label(params: dict[str, Any], keys: list[str] | None = None) -> str:
    """Short run name from ``keys`` (default all): the last part of each key (the whole key
    where two would clash) and the value."""
    keys = list(params) if keys is None else keys
    short = [k.rpartition(".")[2] for k in keys]
    names = [s if short.count(s) == 1 else k for s, k in zip(short, keys, strict=True)]
    return ",".join(f"{n}={_fmt(params[k])}" for n, k in zip(names, keys, strict=True))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_env(spec: dict[str, Any], run_dir: Path, name: str, parallel: int = 1
            ) -> dict[str, str]:
    """Offline W&B into the run's directory; the sweep's interpreter first on PATH; with runs in
    parallel, the CPU threads split between them (unless OMP_NUM_THREADS is set)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_RUN_ID", "WANDB_SWEEP_ID")}
    env |= {"WANDB_MODE": "offline", "WANDB_DIR": str(run_dir), "WANDB_NAME": name,
            "WANDB_RUN_GROUP": str(spec["name"])}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if parallel > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    return env


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, progress-bar redraws (``\\r``) reduced to their final state."""
    if not path.is_file():
        return ""
    kept = [line.rpartition("\r")[2] for line in path.read_text(errors="replace").split("\n")]
    return "\n".join([line for line in kept if line.strip()][-lines:])


def read_wandb_summary(run_dir: Path) -> tuple[dict[str, Any], Path | None]:
    """The summary of the run's latest W&B run folder: ``files/wandb-summary.json`` where W&B
    wrote one, else read from the offline ``.wandb`` log by ``wandb leet inspect --summary``."""
    pattern = re.compile(r"^(offline-)?run-(\d{8}_\d{6})-")
    found = [p for p in (run_dir / "wandb").glob("*run-*")
             if p.is_dir() and pattern.match(p.name)]
    if not found:
        return {}, None
    latest = max(found, key=lambda p: pattern.match(p.name).group(2))
    file = latest / "files" / "wandb-summary.json"
    if file.is_file():
        return json.loads(file.read_text()), latest
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json",
                           str(latest)], capture_output=True, text=True, timeout=300)
    try:
        return json.loads(done.stdout).get("summary") or {}, latest
    except json.JSONDecodeError:
        return {}, latest


def from_checkpoint(path: Path) -> dict[str, Any]:
    """Shipped config, last monitored accuracy and table costs from a search checkpoint (for runs
    that log no W&B summary)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt.get("hwnas", {})
    out: dict[str, Any] = {"arch": meta.get("shipped", meta.get("argmax"))}
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and state.get("current_score") is not None:
            out["val_acc"] = float(state["current_score"])
    carried = meta.get("cost_table")  # older checkpoints: only the path of the table file
    table_file = ckpt.get("hyper_parameters", {}).get("cost_table")
    if out["arch"] and meta.get("space") and (carried is not None or (
            isinstance(table_file, str) and Path(table_file).is_file())):
        from costmodels import CostTable, table_cost
        from supernet import ArchConfig, SearchSpace

        space = SearchSpace(meta["space"])
        table = (CostTable.from_dict(carried, f"{path}: its cost table") if carried is not None
                 else CostTable.load(table_file))
        arch = ArchConfig.from_dict(out["arch"])
        out["costs"] = {m: table_cost(space, table, arch, m) for m in table.metrics}
    return out


def collect(run_dir: Path) -> dict[str, Any]:
    """What a finished run reports: final argmax config, table costs, budgets, accuracy."""
    summary, wandb_dir = read_wandb_summary(run_dir)
    final = {k.removeprefix("final/"): v for k, v in summary.items() if k.startswith("final/")}
    arch = final.get("arch")
    out: dict[str, Any] = {
        "arch": json.loads(arch) if isinstance(arch, str) else arch,
        "costs": {k: v for k, v in final.items() if isinstance(v, int | float)
                  and not k.startswith(("budget_", "lambda_")) and not k.endswith("acc")},
        "budgets": {k.removeprefix("budget_"): v for k, v in final.items()
                    if k.startswith("budget_")},
        "val_acc": final.get("val_acc", summary.get("val/acc")),
        "checkpoint": None,
        "wandb_run": str(wandb_dir) if wandb_dir else None,
        "summary": {k: v for k, v in summary.items()
                    if isinstance(v, int | float | str) and not k.startswith("_")},
    }
    ckpts = [run_dir / "checkpoints" / "last.ckpt"] + sorted(run_dir.rglob("last.ckpt"))
    ckpt = next((c for c in ckpts if c.is_file()), None)
    if ckpt is not None:
        out["checkpoint"] = str(ckpt)
        if out["arch"] is None or out["val_acc"] is None:
            fallback = from_checkpoint(ckpt)
            out |= {k: v for k, v in fallback.items() if out.get(k) in (None, {})}
    return out


# -- the sweep --------------------------------------------------------------------------------
class Sweep:
    """A checked sweep: its spec, the runs' parameters and, for search commands, the overrides
    that put each run's logs and checkpoints in its own directory."""

    def __init__(self, path: str | Path, out: str | Path | None = None, count: int | None = None,
                 seed: int = 0, cost_metric: str | None = None):
        self.spec = load_sweep(path)
        self.path = Path(path)
        self.out = Path(out or Path("runs") / "sweeps" / str(self.spec["name"]))
        drawn = expand(self.spec, count, seed)
        self.seed, self.runs = seed, list({run_id(p): p for p in drawn}.values())
        notes = ["bayes needs the W&B server's optimizer: running it as a seeded random search"
                 ] if self.spec["method"] == "bayes" else []
        if len(self.runs) < len(drawn):
            notes.append(f"{len(drawn) - len(self.runs)} repeated draws dropped (same parameters,"
                         " same run)")
        argv = build_command(self.spec, {})
        found = search_args(argv)
        self.subcommand = found[1] if found else None
        self.base: dict[str, Any] = {}
        if found:
            self.base = check_options(self.spec, found[1], argv[found[0]:])
        else:
            notes.append("the command does not run `hwnas search fit|validate|test`: parameter "
                         "names are not checked and runs get no per-run log/checkpoint options")
        self.note = "\n".join(notes)
        # run names show the parameters that vary
        self.varying = [k for k in self.spec["parameters"]
                        if len({json.dumps(r[k]) for r in self.runs}) > 1] or None
        self.cost_metric = cost_metric or str(
            self.spec["parameters"].get("model.budget.metric", {}).get("value")
            or self.base.get("model.budget.metric") or "latency_ms")

    def command(self, params: dict[str, Any], run_dir: Path) -> list[str]:
        """The run's argv: the file's command, then this run's directories (and its last
        checkpoint when a killed run is resumed)."""
        argv = build_command(self.spec, params, run_dir)
        if not self.subcommand:
            return argv
        argv.append(f"--trainer.default_root_dir={run_dir}")
        if "checkpoint.dirpath" in self.base:
            argv.append(f"--checkpoint.dirpath={run_dir / 'checkpoints'}")
        if "trainer.logger.init_args.save_dir" in self.base:
            argv.append(f"--trainer.logger.init_args.save_dir={run_dir}")
        last = run_dir / "checkpoints" / "last.ckpt"
        if self.subcommand == "fit" and last.is_file():
            argv.append(f"--ckpt_path={last}")
        return argv

    def execute(self, params: dict[str, Any], parallel: int = 1) -> dict[str, Any]:
        """Run one set of parameters to completion; never raises for the run's own failure."""
        rid = run_id(params)
        run_dir = (self.out / rid).resolve()
        record: dict[str, Any] = {"id": rid, "label": label(params, self.varying),
                                  "parameters": params,
                                  "dir": str(run_dir)}
        if (run_dir / RESULT).is_file():
            return json.loads((run_dir / RESULT).read_text()) | {"skipped": True}
        run_dir.mkdir(parents=True, exist_ok=True)
        argv = self.command(params, run_dir)
        (run_dir / "args.json").write_text(json.dumps(params))
        record["command"] = argv
        start = time.monotonic()
        try:
            with open(run_dir / "stdout.log", "w") as out, open(run_dir / "stderr.log", "w") as err:
                code = subprocess.run(argv, stdout=out, stderr=err,
                                      env=run_env(self.spec, run_dir, record["label"],
                                                   parallel)).returncode
        except OSError as e:  # the program itself could not start
            (run_dir / "stderr.log").write_text(f"{argv[0]}: {e}\n")
            code = 127
        record |= {"exit_code": code, "seconds": round(time.monotonic() - start, 1)}
        if code != 0:
            return record | {"status": "failed", "error": tail(run_dir / "stderr.log")}
        record |= {"status": "finished"} | collect(run_dir)
        write_atomic(run_dir / RESULT, lambda p: p.write_text(json.dumps(record, indent=1)))
        return record


def summarize(sweep: Sweep, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``sweep_results.json``: the sweep, every run (front flags set) and the best run."""
    m = sweep.cost_metric
    done = [r for r in records if r.get("status") == "finished"
            and r.get("val_acc") is not None and r.get("costs", {}).get(m) is not None]
    for r in records:
        r.pop("on_front", None)
    flags = pareto_flags([r["costs"][m] for r in done], [r["val_acc"] for r in done])
    for r, flag in zip(done, flags, strict=True):
        r["on_front"] = flag
    metric = sweep.spec.get("metric") or {"name": "final/val_acc", "goal": "maximize"}

    def score(r: dict[str, Any]) -> float | None:
        value = r.get("summary", {}).get(metric["name"])
        if value is None and metric["name"] in ("final/val_acc", "val/acc"):
            value = r.get("val_acc")  # e.g. a run resumed after its last epoch
        return value if isinstance(value, int | float) else None

    best = (max if metric.get("goal") == "maximize" else min)(
        (r for r in records if score(r) is not None), key=score, default=None)
    counts = {s: sum(r.get("status") == s for r in records) for s in ("finished", "failed")}
    return {
        "sweep": {"file": str(sweep.path), "name": sweep.spec["name"],
                  "method": sweep.spec["method"], "metric": metric,
                  "command": sweep.spec["command"], "seed": sweep.seed, "runs": len(records),
                  "cost_metric": m} | counts,
        "best": best["id"] if best else None,
        "runs": [{k: v for k, v in r.items() if k != "skipped"} for r in records],
    }


def plot_sweep(records: list[dict[str, Any]], metric: str, path: Path) -> Path | None:
    """Accuracy against the table cost of each run's final argmax config, front in red."""
    points = [r for r in records if "on_front" in r]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([r["costs"][metric] for r in points], [r["val_acc"] for r in points], s=22,
               c="tab:blue", label="sweep runs (final argmax)")
    at: dict[tuple[float, float], list[str]] = {}
    for r in points:  # runs that land on the same point share one label
        at.setdefault((r["costs"][metric], r["val_acc"]), []).append(r["label"])
    for xy, names in at.items():
        ax.annotate("; ".join(names), xy, fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = sorted((r["costs"][metric], r["val_acc"]) for r in points if r["on_front"])
    ax.step(*zip(*front, strict=True), where="post", c="tab:red", lw=1.5, label="Pareto front")
    ax.scatter(*zip(*front, strict=True), s=60, facecolors="none", edgecolors="tab:red")
    ax.set_xlabel(f"{metric} (cost table)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        return write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    finally:
        plt.close(fig)


def run_sweep(sweep: Sweep, parallel: int = 1, echo: Callable[[str], None] = print) -> int:
    """Run every unfinished run (``parallel`` at a time), then write the results; 0 when every
    run finished, 1 when one failed, 130 when interrupted (rerun to resume)."""
    total, lock = len(sweep.runs), threading.Lock()
    records: list[dict[str, Any] | None] = [None] * total

    def one(i: int, params: dict[str, Any]) -> None:
        head = f"[{i + 1}/{total}] {run_id(params)} {label(params, sweep.varying)}"
        if not (sweep.out / run_id(params) / RESULT).is_file():
            with lock:
                echo(f"{head}: running")
        r = records[i] = sweep.execute(params, parallel)
        with lock:
            if r.get("skipped"):
                echo(f"{head}: finished before, skipped")
            elif r["status"] == "finished":
                cost = r.get("costs", {}).get(sweep.cost_metric)
                echo(f"{head}: finished in {r['seconds']} s: val_acc={_fmt(r.get('val_acc'))} "
                     f"{sweep.cost_metric}={_fmt(cost)}")
            else:
                echo(f"{head}: FAILED (exit {r['exit_code']}) after {r['seconds']} s; "
                     f"log {r['dir']}/stderr.log:\n" + "\n".join(
                         "    | " + line for line in r["error"].splitlines()))

    sweep.out.mkdir(parents=True, exist_ok=True)
    code = 0
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        for future in [pool.submit(one, i, p) for i, p in enumerate(sweep.runs)]:
            future.result()
    except KeyboardInterrupt:
        echo("interrupted: finished runs are kept; rerun the same command to resume")
        pool.shutdown(wait=True, cancel_futures=True)
        code = 130
    pool.shutdown(wait=True)
    pending = [{"id": run_id(p), "label": label(p, sweep.varying), "parameters": p,
                "status": "pending"} for p in sweep.runs]
    done = [r or waiting for r, waiting in zip(records, pending, strict=True)]
    results = summarize(sweep, done)
    write_atomic(sweep.out / RESULTS,
                 lambda p: p.write_text(json.dumps(results, indent=1) + "\n"))
    plot = plot_sweep(done, sweep.cost_metric, sweep.out / PLOT)
    s = results["sweep"]
    echo(f"{s['finished']} finished, {s['failed']} failed of {total}; best: {results['best']}; "
         f"results {sweep.out / RESULTS}" + (f", plot {plot}" if plot else ""))
    return code or (1 if s["failed"] else 0)


def sweep_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hwnas sweep",
        description="Run a W&B sweep file (grid or random) with no W&B server: each run is a "
                    "subprocess logging to W&B offline in its own directory; a rerun resumes.")
    parser.add_argument("sweep_file", help="W&B sweep YAML, e.g. configs/sweeps/latency_budgets"
                                           ".yaml")
    parser.add_argument("--out", help="sweep directory (default runs/sweeps/<sweep name>)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="runs at a time (default 1)")
    parser.add_argument("--count", type=int, metavar="N",
                        help="number of runs: required for random; caps a grid")
    parser.add_argument("--seed", type=int, default=0, help="seed of random draws (default 0)")
    parser.add_argument("--cost-metric", help="cost-table metric of the Pareto plot "
                                              "(default: the budget's metric)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the file and print each run's command; run nothing")
    args = parser.parse_args(argv)
    if args.parallel < 1 or (args.count is not None and args.count < 1):
        parser.error("--parallel and --count must be at least 1")
    try:
        sweep = Sweep(args.sweep_file, args.out, args.count, args.seed, args.cost_metric)
    except SweepError as e:
        parser.error(f"{args.sweep_file}: {e}")
    print(f"sweep {sweep.spec['name']}: {sweep.spec['method']}, {len(sweep.runs)} runs -> "
          f"{sweep.out}" + (f"\nnote: {sweep.note}" if sweep.note else ""), flush=True)
    if args.dry_run:
        for i, params in enumerate(sweep.runs):
            run_dir = (sweep.out / run_id(params)).resolve()
            state = "finished" if (run_dir / RESULT).is_file() else "to run"
            print(f"[{i + 1}/{len(sweep.runs)}] {run_id(params)} ({state}): "
                  + " ".join(sweep.command(params, run_dir)))
        return 0
    return run_sweep(sweep, args.parallel, lambda line: print(line, flush=True))
