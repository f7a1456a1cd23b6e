"""`hwnas sweep`: W&B sweep files run offline — expansion, checks, failures, resume, results."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas.cli import main
from nas.sweeps.file import (
    RECORD,
    RESULT,
    RESULTS,
    SweepError,
    expand,
    format_args,
    load_sweep,
    propose,
    run_id,
)
from nas.sweeps.run import from_checkpoint

REPO = Path(__file__).resolve().parents[2]
FRACTIONS = [0.15, 0.4, 1.0]


def write_sweep(path: Path, parameters: dict, command: list[str] | None = None, **extra) -> Path:
    spec = {"name": path.stem, "method": "grid", **extra, "parameters": parameters}
    spec["command"] = command or ["${env}", "${interpreter}", "${program}", "${args}"]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tiny_search_command(table: str) -> list[str]:
    """`hwnas search fit` on the tiny space and synthetic data, a few steps long."""
    return ["${env}", "${interpreter}", "-m", "nas", "search", "fit",
            "--config", "configs/search/tiny.yaml", f"--model.cost_table={table}",
            "--model.sandwich_random=0", "--data.init_args.num_samples=160",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "${args}"]


def wandb_summary(run_folder: Path) -> dict:
    """What W&B 0.31 keeps of an offline run's summary (it writes no wandb-summary.json offline:
    the summary lives in the run's .wandb log, read back by `wandb leet inspect --summary`)."""
    file = run_folder / "files" / "wandb-summary.json"
    if file.is_file():
        return json.loads(file.read_text())
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary",
                           "--json", str(run_folder)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)["summary"]


# -- the sweep file -----------------------------------------------------------------------------
def test_args_are_formatted_as_wandb_formats_them():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    params = {"model.budget.fraction": 0.3, "model.budget.loss": "hinge", "trainer.max_epochs": 2,
              "trainer.deterministic": True, "model.budget.target": "null"}
    theirs = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    ours = format_args(params)
    for macro in ("args", "args_no_hyphens", "args_no_equals", "args_no_boolean_flags",
                  "args_json"):
        assert ours[macro] == theirs[macro], macro


def test_grid_is_the_cartesian_product_and_random_is_seeded(tmp_path):
    grid = load_sweep(write_sweep(tmp_path / "g.yaml", {
        "model.budget.fraction": {"values": [0.2, 0.4, 0.6]},
        "model.budget.loss": {"values": ["hinge", "lagrangian"]},
        "model.budget.metric": {"value": "latency_ms"},
        "trainer.max_epochs": {"min": 1, "max": 2},  # int_uniform: both ends
    }, program="train.py"))
    runs = expand(grid)
    assert len(runs) == 3 * 2 * 2 and len({run_id(r) for r in runs}) == 12
    assert {r["trainer.max_epochs"] for r in runs} == {1, 2}
    assert expand(grid, count=5) == runs[:5]

    rand = load_sweep(write_sweep(tmp_path / "r.yaml", {
        "model.arch_lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-1},
        "model.tau_end": {"min": 0.1, "max": 1.0},
        "model.sandwich_random": {"distribution": "int_uniform", "min": 0, "max": 3},
        "model.relaxation": {"values": ["softmax", "gumbel"]},
    }, program="train.py", method="random"))
    draws = expand(rand, count=20, seed=3)
    assert draws == expand(rand, count=20, seed=3) != expand(rand, count=20, seed=4)
    assert expand(rand, count=5, seed=3) == draws[:5]  # more runs extend, never reshuffle
    assert all(1e-3 <= d["model.arch_lr"] <= 1e-1 and 0.1 <= d["model.tau_end"] <= 1.0
               and d["model.sandwich_random"] in range(4) for d in draws)
    assert {d["model.relaxation"] for d in draws} == {"softmax", "gumbel"}
    with pytest.raises(SweepError, match="--count"):
        expand(rand)
    assert run_id({"a": 1, "b": 2}) == run_id({"b": 2, "a": 1})


@pytest.mark.parametrize("parameters, method, message", [
    ({"model.budget.fraction": {"values": [0.3]}}, "hyperband", r"method: got 'hyperband'"),
    ({"model.budget.fraction": {"min": 0.1, "max": 0.5}}, "grid", "method grid needs values"),
    ({"model.budget.fraction": {"distribution": "gaussian", "min": 0, "max": 1}}, "random",
     r"model.budget.fraction.distribution: got 'gaussian'"),
    ({"model": {"parameters": {"budget": {"value": 1}}}}, "grid", "dotted key"),
])
def test_malformed_sweep_files_are_usage_errors(tmp_path, capsys, parameters, method, message):
    path = write_sweep(tmp_path / "bad.yaml", parameters, program="x.py", method=method)
    with pytest.raises(SystemExit) as excinfo:
        main(["sweep", str(path), "--dry-run"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "hwnas sweep: error:" in err and str(path) in err
    assert re.search(message, err), err


@pytest.mark.parametrize("parameters, message", [
    ({"model.budget.fractoin": {"values": [0.2]}},
     "parameters.model.budget.fractoin: not an option of `hwnas search fit`; "
     "did you mean model.budget.fraction?"),
    ({"trainer.max_epochz": {"value": 1}},
     "parameters.trainer.max_epochz: not an option .* did you mean trainer.max_epochs?"),
    ({"model.relaxation": {"values": ["softmax", "annealed"]}},
     "parameters.model.relaxation: value 'annealed' is rejected"),
    ({"model.budget.fraction": {"values": [0.2, 0.4]}, "model.budget.loss": {"values":
                                                                            ["hinge", "l2"]}},
     "parameters.model.budget.loss: value 'l2' is rejected"),
])
def test_parameters_are_checked_against_the_search_cli(tmp_path, capsys, monkeypatch,
                                                       tiny_table, parameters, message):
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    path = write_sweep(tmp_path / "bad.yaml", parameters, tiny_search_command(tiny_table))
    with pytest.raises(SystemExit) as excinfo:
        main(["sweep", str(path), "--out", str(out)])
    assert excinfo.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()  # nothing launched


@pytest.mark.parametrize("name", ["latency_budgets", "relaxation_and_lambda", "weights_bayes"])
def test_shipped_sweep_files_pass_the_checks(name, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert main(["sweep", f"configs/sweeps/{name}.yaml", "--dry-run", "--count", "2",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "search fit --config configs/search/fmnist.yaml --model.budget." in out
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


# -- the runner, with a stand-in program (no torch: milliseconds per run) ------------------------
STAND_IN = """
import os, sys
from pathlib import Path
calls = Path(os.environ["WANDB_DIR"]) / "calls"
calls.write_text(str(int(calls.read_text()) + 1 if calls.exists() else 1))
assert os.environ["WANDB_MODE"] == "offline"
if "--x=2" in sys.argv:
    sys.exit("boom: x=2 is not allowed")
"""


def test_failed_run_is_reported_others_finish_and_a_rerun_resumes(tmp_path, capsys):
    program = tmp_path / "stand_in.py"
    program.write_text(STAND_IN)
    path = write_sweep(tmp_path / "s.yaml", {"x": {"values": [1, 2, 3, 4]}}, program=str(program))
    out = tmp_path / "out"

    assert main(["sweep", str(path), "--out", str(out), "--parallel", "2"]) == 1
    log = capsys.readouterr().out
    assert "FAILED (exit 1)" in log and "boom: x=2 is not allowed" in log
    results = json.loads((out / RESULTS).read_text())
    status = {r["parameters"]["x"]: r["status"] for r in results["runs"]}
    assert status == {1: "finished", 2: "failed", 3: "finished", 4: "finished"}
    failed = next(r for r in results["runs"] if r["status"] == "failed")
    assert failed["exit_code"] == 1 and "boom" in failed["error"]
    assert results["sweep"]["finished"] == 3 and results["sweep"]["failed"] == 1
    ids = {r["parameters"]["x"]: r["id"] for r in results["runs"]}
    stamps = {x: (out / i / RECORD).stat().st_mtime_ns for x, i in ids.items() if x != 2}

    assert main(["sweep", str(path), "--out", str(out)]) == 1
    assert capsys.readouterr().out.count("finished before, skipped") == 3
    calls = {x: int((out / i / "calls").read_text()) for x, i in ids.items()}
    assert calls == {1: 1, 2: 2, 3: 1, 4: 1}  # only the failed run ran again
    assert stamps == {x: (out / ids[x] / RECORD).stat().st_mtime_ns for x in stamps}


BAYES_STAND_IN = """
import json, os, sys
from pathlib import Path
x = float(next(a for a in sys.argv if a.startswith("--x=")).partition("=")[2])
Path(os.environ["WANDB_DIR"], "result.json").write_text(
    json.dumps({"summary": {"final/val_acc": 1 - (x - 0.7) ** 2}}))
"""


def test_bayes_is_the_engines_gaussian_process_and_beats_random_draws():
    spec = {"method": "bayes", "metric": {"name": "acc", "goal": "maximize"},
            "parameters": {"x": {"min": 0.0, "max": 1.0}, "y": {"min": 0.0, "max": 1.0}}}

    def acc(p):
        return 1 - (p["x"] - 0.7) ** 2 - (p["y"] - 0.2) ** 2

    history = []
    for _ in range(12):
        p = propose(spec, history, seed=0)
        history.append((p, "finished", {"acc": acc(p)}))
    draws = expand(dict(spec, method="random"), count=12, seed=0)
    assert max(acc(p) for p, _, _ in history) > 0.999 > max(map(acc, draws))
    assert propose(spec, history, seed=0) == propose(spec, history, seed=0)  # same runs, same next


def test_bayes_sweep_proposes_from_finished_runs_and_a_rerun_extends_it(tmp_path, capsys):
    program = tmp_path / "stand_in.py"
    program.write_text(BAYES_STAND_IN)
    path = write_sweep(tmp_path / "b.yaml", {"x": {"min": 0.0, "max": 1.0}},
                       program=str(program), method="bayes",
                       metric={"name": "final/val_acc", "goal": "maximize"})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--count", "4", "--parallel", "2"]) == 0
    results = json.loads((out / RESULTS).read_text())
    assert [r["status"] for r in results["runs"]] == ["finished"] * 4
    best = next(r for r in results["runs"] if r["id"] == results["best"])
    assert best["val_acc"] == max(r["val_acc"] for r in results["runs"])
    capsys.readouterr()

    assert main(["sweep", str(path), "--out", str(out), "--count", "6"]) == 0
    log = capsys.readouterr().out
    assert log.count("finished before, skipped") == 4 and log.count(": running") == 2
    assert len(json.loads((out / RESULTS).read_text())["runs"]) == 6

    path.write_text(path.read_text().replace("metric:", "unused:"))
    with pytest.raises(SystemExit):
        main(["sweep", str(path), "--dry-run"])
    assert "metric: method bayes needs the metric it optimizes" in capsys.readouterr().err


def test_a_search_writes_its_own_result_at_fit_end(tiny_space, tiny_table, tmp_path):
    """RunResult: the shipped member, its table costs against the budget and the last logged
    metrics, priced independently here from the table file."""
    import pytorch_lightning as L

    from costmodels import CostTable, table_cost
    from nas.callbacks import RunResult
    from nas.data.splits import SyntheticDataModule
    from nas.search import SupernetSearch
    from supernet import ArchConfig
    from tests.conftest import TINY

    module = SupernetSearch(space=TINY, cost_table=tiny_table, warmup_epochs=0,
                            sandwich_random=0)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                        accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0, callbacks=[RunResult()])
    trainer.fit(module, SyntheticDataModule(num_samples=256, batch_size=32))
    result = json.loads((tmp_path / RESULT).read_text())  # beside the checkpoints' folder
    summary, table = result["summary"], CostTable.load(tiny_table)
    arch = ArchConfig.from_dict(json.loads(summary["final/arch"]))
    priced = [m for m in table.metrics if f"final/{m}" in summary]
    assert "latency_ms" in priced  # the budget's metric
    for metric in priced:
        assert summary[f"final/{metric}"] == pytest.approx(table_cost(tiny_space, table, arch,
                                                                      metric))
    assert summary["final/val_acc"] == summary["val/acc"] == pytest.approx(
        float(trainer.callback_metrics["val/acc"]))
    assert Path(result["checkpoint"]).is_file() and result["wandb_run"] is None


# -- real searches: the tiny space, synthetic data, three steps each -----------------------------
@pytest.fixture(scope="module")
def budget_sweep(tiny_table, tmp_path_factory):
    """A 3-run grid over latency budgets, run by `hwnas sweep` (2 runs at a time)."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = write_sweep(tmp / "budgets.yaml", {
        "model.budget.fraction": {"values": FRACTIONS}, "model.budget.loss": {"value": "hinge"},
        "model.seed": {"value": 1}},  # apart from the data's seed, which stays 0
        tiny_search_command(tiny_table), metric={"name": "final/val_acc", "goal": "maximize"})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        mp.setenv("OMP_NUM_THREADS", "1")  # 2 busy cores: threads per run only contend
        code = main(["sweep", str(path), "--out", str(tmp / "out"), "--parallel", "2"])
    return code, tmp / "out", path


@pytest.mark.slow
def test_budget_grid_logs_offline_runs_and_tighter_budgets_are_cheaper(budget_sweep):
    code, out, _ = budget_sweep
    assert code == 0
    results = json.loads((out / RESULTS).read_text())
    runs = sorted(results["runs"], key=lambda r: r["parameters"]["model.budget.fraction"])
    assert [r["status"] for r in runs] == ["finished"] * 3
    for r in runs:
        folders = list((Path(r["dir"]) / "wandb").glob("offline-run-*"))
        assert len(folders) == 1 and r["wandb_run"] == str(folders[0])
        summary = wandb_summary(folders[0])
        assert json.loads(summary["final/arch"]) == r["arch"]
        assert summary["final/latency_ms"] == pytest.approx(r["costs"]["latency_ms"])
        assert summary["final/val_acc"] == pytest.approx(r["val_acc"])
        assert summary["final/budget_latency_ms"] == pytest.approx(r["budgets"]["latency_ms"])
        assert Path(r["checkpoint"]).is_file() and Path(r["dir"], RESULT).is_file()
    costs = [r["costs"]["latency_ms"] for r in runs]
    assert costs == sorted(costs), costs  # tighter budget, cheaper (or equal) architecture
    assert costs[0] <= runs[0]["budgets"]["latency_ms"]
    assert any(r["on_front"] for r in runs) and results["best"] in {r["id"] for r in runs}
    assert (out / "sweep_pareto.png").stat().st_size > 0


@pytest.mark.slow
def test_checkpoint_fallback_agrees_with_the_wandb_summary(budget_sweep):
    _, out, _ = budget_sweep
    for r in json.loads((out / RESULTS).read_text())["runs"]:
        fallback = from_checkpoint(Path(r["checkpoint"]))
        assert fallback["arch"] == r["arch"]
        assert fallback["costs"]["latency_ms"] == pytest.approx(r["costs"]["latency_ms"])


@pytest.mark.slow
def test_infeasible_budget_fails_alone_and_finished_runs_are_not_rerun(budget_sweep, tiny_table,
                                                                        capsys, monkeypatch):
    _, out, first = budget_sweep
    spec = yaml.safe_load(first.read_text())
    spec["parameters"]["model.budget.fraction"]["values"] = [0.01, *FRACTIONS]
    path = first.with_name("with_infeasible.yaml")
    path.write_text(yaml.safe_dump(spec))
    before = {d.name: (d / RECORD).stat().st_mtime_ns for d in out.iterdir() if d.is_dir()}
    wandb_runs = len(list(out.glob("*/wandb/offline-run-*")))
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    assert main(["sweep", str(path), "--out", str(out)]) == 1
    log = capsys.readouterr().out
    assert log.count("finished before, skipped") == 3
    assert "FAILED (exit 1)" in log and "infeasible" in log
    results = json.loads((out / RESULTS).read_text())
    failed = [r for r in results["runs"] if r["status"] == "failed"]
    assert [r["parameters"]["model.budget.fraction"] for r in failed] == [0.01]
    assert "below the cheapest member's cost" in failed[0]["error"]
    assert results["sweep"]["finished"] == 3
    assert before == {d: (out / d / RECORD).stat().st_mtime_ns for d in before}
    assert len(list(out.glob("*/wandb/offline-run-*"))) == wandb_runs
    assert os.path.isdir(failed[0]["dir"]) and not Path(failed[0]["dir"], RECORD).exists()
