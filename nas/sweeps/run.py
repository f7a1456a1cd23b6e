"""`hwnas sweep`: run a W&B sweep file with no W&B server, one subprocess per run.

Each run gets its own directory, named by a hash of its parameters, and logs to W&B offline;
the search writes its own ``result.json`` there at fit end (`nas.callbacks.RunResult`) and the
sweep adds ``sweep_run.json`` when the run finished, so rerunning the command resumes a half-done
sweep. The sweep's results are ``sweep_results.json`` and ``sweep_pareto.png`` (accuracy against
table cost, a point a run). The file itself, its draws and its checks are `nas.sweeps.file`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from nas.family.pareto import pareto_flags
from nas.sweeps.file import (
    PLOT,
    RECORD,
    RESULT,
    RESULTS,
    SweepError,
    build_command,
    check_options,
    expand,
    load_sweep,
    propose,
    run_id,
    search_args,
)
from supernet.io import write_atomic


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


def from_checkpoint(path: Path) -> dict[str, Any]:
    """The member a search checkpoint ships and its costs, priced with the table the checkpoint
    carries (no W&B, no run directory, no table file)."""
    import torch

    from costmodels import CostTable, table_cost
    from supernet import ArchConfig, SearchSpace

    meta = torch.load(path, map_location="cpu", weights_only=True)["hwnas"]
    table = CostTable.from_dict(meta["cost_table"], f"{path}: its cost table")
    arch = meta.get("shipped", meta.get("argmax"))
    config = ArchConfig.from_dict(arch)
    return {"arch": arch, "costs": {m: table_cost(SearchSpace(meta["space"]), table, config, m)
                                    for m in table.metrics}}


def collect(run_dir: Path) -> dict[str, Any]:
    """What a finished run reports, from the ``result.json`` it wrote (none: a program that is
    not a search): the member it ships, its table costs, budgets and accuracy."""
    result = json.loads((run_dir / RESULT).read_text()) if (run_dir / RESULT).is_file() else {}
    summary = result.get("summary", {})
    final = {k.removeprefix("final/"): v for k, v in summary.items() if k.startswith("final/")}
    return {
        "arch": json.loads(final["arch"]) if "arch" in final else None,
        "costs": {k: v for k, v in final.items() if isinstance(v, int | float)
                  and not k.startswith(("budget_", "lambda_", "ratio_")) and k != "val_acc"},
        "budgets": {k.removeprefix("budget_"): v for k, v in final.items()
                    if k.startswith("budget_")},
        "val_acc": final.get("val_acc", summary.get("val/acc")),
        "checkpoint": result.get("checkpoint"),
        "wandb_run": result.get("wandb_run"),
        "summary": {k: v for k, v in summary.items() if isinstance(v, int | float | str)},
    }


# -- the sweep --------------------------------------------------------------------------------
class Sweep:
    """A checked sweep: its spec, the runs' parameters and, for search commands, the overrides
    that put each run's logs, checkpoints and result in its own directory. A bayes sweep knows
    only the runs started so far; `propose` draws the next."""

    def __init__(self, path: str | Path, out: str | Path | None = None, count: int | None = None,
                 seed: int = 0, cost_metric: str | None = None):
        self.spec = load_sweep(path)
        self.path = Path(path)
        self.out = Path(out or Path("runs") / "sweeps" / str(self.spec["name"]))
        drawn = expand(self.spec, count, seed)
        self.seed, self.runs = seed, list({run_id(p): p for p in drawn}.values())
        self.total, notes = len(self.runs), []
        if self.spec["method"] == "bayes":
            self.runs, self.total = self.started(), count or self.spec["run_cap"]
            notes.append("bayes: W&B's Gaussian-process search proposes each run from the "
                         f"finished ones ({len(self.runs)} started before)")
        elif len(self.runs) < len(drawn):
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
        keys = list(self.spec["parameters"])  # run names show the parameters that vary
        self.varying = [k for k in keys if "value" not in self.spec["parameters"][k]] or None
        self.cost_metric = cost_metric or str(
            self.spec["parameters"].get("model.budget.metric", {}).get("value")
            or self.base.get("model.budget.metric") or "latency_ms")

    def started(self) -> list[dict[str, Any]]:
        """The parameters of the runs started in the sweep's directory, oldest first."""
        files = sorted(self.out.glob("*/args.json"), key=lambda f: f.stat().st_mtime_ns)
        return [json.loads(f.read_text()) for f in files]

    def propose(self, records: list[dict[str, Any] | None]) -> dict[str, Any] | None:
        """Bayes: the next run from every run so far (``None`` when the sweep is complete or
        is not bayes); running runs count as running."""
        if self.spec["method"] != "bayes" or len(self.runs) >= self.total:
            return None
        metric = self.spec["metric"]["name"]
        history = []
        for params, r in zip(self.runs, records, strict=True):
            state = "running" if r is None else "finished" if r["status"] == "finished" else "failed"
            value = (r or {}).get("summary", {}).get(metric)
            history.append((params, state, {metric: value} if value is not None else {}))
        params = propose(self.spec, history, self.seed)
        self.runs.append(params)
        return params

    def command(self, params: dict[str, Any], run_dir: Path) -> list[str]:
        """The run's argv: the file's command, then this run's directories (and its last
        checkpoint when a killed run is resumed)."""
        argv = build_command(self.spec, params, run_dir)
        if not self.subcommand:
            return argv
        argv.append(f"--trainer.default_root_dir={run_dir}")
        for option, path in (("checkpoint.dirpath", run_dir / "checkpoints"),
                             ("trainer.logger.init_args.save_dir", run_dir),
                             ("run_result.path", run_dir / RESULT)):
            if option in self.base:
                argv.append(f"--{option}={path}")
        last = run_dir / "checkpoints" / "last.ckpt"
        if self.subcommand == "fit" and last.is_file():
            argv.append(f"--ckpt_path={last}")
        return argv

    def execute(self, params: dict[str, Any], parallel: int = 1) -> dict[str, Any]:
        """Run one set of parameters to completion; never raises for the run's own failure."""
        rid = run_id(params)
        run_dir = (self.out / rid).resolve()
        record: dict[str, Any] = {"id": rid, "label": label(params, self.varying),
                                  "parameters": params, "dir": str(run_dir)}
        if (run_dir / RECORD).is_file():
            return json.loads((run_dir / RECORD).read_text()) | {"skipped": True}
        run_dir.mkdir(parents=True, exist_ok=True)
        argv = self.command(params, run_dir)
        (run_dir / "args.json").write_text(json.dumps(params))
        (run_dir / RESULT).unlink(missing_ok=True)  # a retried run writes its own again
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
        write_atomic(run_dir / RECORD, lambda p: p.write_text(json.dumps(record, indent=1)))
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
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
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
    return write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))


def run_sweep(sweep: Sweep, parallel: int = 1, echo: Callable[[str], None] = print) -> int:
    """Run every unfinished run (``parallel`` at a time; bayes proposes each as a slot frees),
    then write the results; 0 when every run finished, 1 when one failed, 130 when interrupted
    (rerun to resume)."""
    lock, records = threading.Lock(), [None] * len(sweep.runs)

    def one(i: int, params: dict[str, Any]) -> None:
        head = f"[{i + 1}/{sweep.total}] {run_id(params)} {label(params, sweep.varying)}"
        if not (sweep.out / run_id(params) / RECORD).is_file():
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
    code, running, started = 0, set[Future](), 0
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        while True:
            while len(running) < parallel and (started < len(sweep.runs)
                                               or sweep.propose(records) is not None):
                records += [None] * (len(sweep.runs) - len(records))
                running.add(pool.submit(one, started, sweep.runs[started]))
                started += 1
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
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
    echo(f"{s['finished']} finished, {s['failed']} failed of {len(done)}; best: "
         f"{results['best']}; results {sweep.out / RESULTS}" + (f", plot {plot}" if plot else ""))
    return code or (1 if s["failed"] else 0)


def sweep_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hwnas sweep",
        description="Run a W&B sweep file (grid, random or bayes) with no W&B server: each run "
                    "is a subprocess logging to W&B offline in its own directory; a rerun "
                    "resumes.")
    parser.add_argument("sweep_file", help="W&B sweep YAML, e.g. configs/sweeps/latency_budgets"
                                           ".yaml")
    parser.add_argument("--out", help="sweep directory (default runs/sweeps/<sweep name>)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="runs at a time (default 1)")
    parser.add_argument("--count", type=int, metavar="N",
                        help="number of runs: required for random and bayes (or run_cap in the "
                             "file); caps a grid")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random and bayes draws (default 0)")
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
    print(f"sweep {sweep.spec['name']}: {sweep.spec['method']}, {sweep.total} runs -> "
          f"{sweep.out}" + (f"\nnote: {sweep.note}" if sweep.note else ""), flush=True)
    if args.dry_run:
        done = [sweep.out / run_id(p) / RECORD for p in sweep.runs]
        proposed = sweep.propose([json.loads(f.read_text()) if f.is_file() else None
                                  for f in done])  # bayes: the next run W&B's search picks
        for i, params in enumerate(sweep.runs):
            run_dir = (sweep.out / run_id(params)).resolve()
            state = ("next proposal" if params is proposed else
                     "finished" if (run_dir / RECORD).is_file() else "to run")
            print(f"[{i + 1}/{sweep.total}] {run_id(params)} ({state}): "
                  + " ".join(sweep.command(params, run_dir)))
        if len(sweep.runs) < sweep.total:
            print(f"[{len(sweep.runs) + 1}-{sweep.total}/{sweep.total}]: proposed by the bayes "
                  "search as runs finish")
        return 0
    return run_sweep(sweep, args.parallel, lambda line: print(line, flush=True))
