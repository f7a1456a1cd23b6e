import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "space" in out
    assert all(name in out for name in COMMANDS)


def test_python_m_nas_help_runs_without_importing_torch():
    code = "import sys; from nas.cli import main; print('torch' in sys.modules)"
    probe = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert probe.stdout.strip() == "False", probe.stderr
    done = subprocess.run(
        [sys.executable, "-m", "nas", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "space" in done.stdout


def test_installed_console_script_help():
    script = Path(sys.executable).parent / "hwnas"
    if not script.exists():
        pytest.skip("hwnas console script not installed (run `make install`)")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "space" in done.stdout


def test_unknown_command_and_no_command_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["no-such-command"])
    assert excinfo.value.code == 2
    assert main([]) == 2
    assert "usage: hwnas" in capsys.readouterr().err


def test_space_help_and_missing_file(capsys, tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        main(["space", "--help"])
    assert excinfo.value.code == 0
    assert "space_file" in capsys.readouterr().out
    with pytest.raises(SystemExit) as excinfo:
        main(["space", str(tmp_path / "missing.yaml")])
    assert excinfo.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_space_prints_the_decisions_of_a_space(capsys):
    assert main(["space", str(REPO / "configs" / "spaces" / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    assert "stage1.width" in out and "shared supernet parameters" in out


def test_space_rejects_a_broken_spec_with_a_usage_error(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nstages: 3\n")
    with pytest.raises(SystemExit) as excinfo:
        main(["space", str(broken)])
    assert excinfo.value.code == 2
    assert str(broken) in capsys.readouterr().err


def search_args(table: str, out) -> list[str]:
    return ["search", "fit", "--config", str(REPO / "configs/search/tiny.yaml"),
            f"--model.space={REPO / 'configs/spaces/tiny.yaml'}", f"--model.cost_table={table}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
            f"--trainer.default_root_dir={out}", f"--checkpoint.dirpath={out}"]


def one_error_line(capsys, argv: list[str], *words: str) -> str:
    """Run `hwnas ARGV`: it must fail with one line on stderr naming ``words``, no traceback."""
    try:
        code = main(argv)
    except SystemExit as usage_error:  # argparse: usage, then one "hwnas CMD: error:" line
        code = usage_error.code
    err = capsys.readouterr().err.strip()
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("hwnas ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_infeasible_budget_is_one_line(tiny_table, tmp_path, capsys):
    line = one_error_line(capsys, search_args(tiny_table, tmp_path)
                          + ["--model.budget.fraction=0.01"], "budget", "cheapest")
    assert line.startswith("hwnas search: error:")


@pytest.mark.parametrize("content", [b"\x00" * 999, "state dict"])
def test_bad_ckpt_path_is_one_line(tiny_table, tmp_path, capsys, content):
    import torch

    bad = tmp_path / "bad.ckpt"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        torch.save({"weight": torch.zeros(2)}, bad)  # loads safely, but holds no search
    line = one_error_line(capsys, search_args(tiny_table, tmp_path) + [f"--ckpt_path={bad}"],
                          str(bad), "search checkpoint")
    assert "weights_only=False" not in line


def test_export_of_a_damaged_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    line = one_error_line(capsys, ["export", "--ckpt", str(bad), "--out", str(tmp_path / "x")],
                          str(bad))
    assert "weights_only=False" not in line


def test_debug_switch_shows_the_traceback(tiny_table, tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_DEBUG", "1")
    with pytest.raises(ValueError, match="cheapest"):
        main(search_args(tiny_table, tmp_path) + ["--model.budget.fraction=0.01"])


@pytest.mark.slow
def test_a_search_prints_no_library_notices(tiny_table, tmp_path):
    """Notices that say nothing about the run are gone at their source: LightningCLI's `args`
    warning, Lightning's hosted-logger tip, torch's LeafSpec deprecation, W&B's `anonymous`
    warning and timm's one-epoch cosine warning."""
    import os

    argv = search_args(tiny_table, tmp_path)
    argv.remove("--trainer.logger=false")  # the default logger: W&B, offline
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "nas", *argv], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    output = run.stdout + run.stderr
    assert "wandb" in output  # the logger did run
    for notice in ("args parameter is intended", "litlogger", "LeafSpec", "anonymous setting",
                   "Cosine annealing scheduler"):
        assert notice not in output, notice


def test_a_search_refuses_a_table_measured_on_another_machine(tmp_path, capsys,
                                                                monkeypatch):
    from dataclasses import replace

    from costmodels import CostTable, build_measured_table
    from supernet import SearchSpace

    tiny = str(REPO / "configs/spaces/tiny.yaml")
    table = build_measured_table(SearchSpace.from_yaml(tiny), "cpu", warmup=1, repeats=2,
                                 progress=False, clock="thread", space_file=tiny)
    host = {**table.meta.host, "cpu": "Imaginary CPU 9000"}
    CostTable(table.entries, replace(table.meta, host=host), table.overhead).save(
        tmp_path / "foreign.json")
    argv = search_args(str(tmp_path / "foreign.json"), tmp_path)
    own = "runs/tables/tiny_cpu_1t.json"
    line = one_error_line(capsys, argv + ["--model.budget.fraction=0.6"], "Imaginary CPU 9000",
                          "hwnas costs build", f"then pass `--model.cost_table {own}`",
                          "--allow-foreign-table")
    assert line.startswith("hwnas search: error: cost table")
    # with this host's own table already in runs/tables/ (as the quick start leaves it), the
    # line names it instead of a rebuild
    monkeypatch.chdir(tmp_path)
    table.save(tmp_path / own)
    monkeypatch.setattr("costmodels.host.probe_times", lambda t, space: dict(t.meta.probe))
    line = one_error_line(capsys, argv + ["--model.budget.fraction=0.6"], "Imaginary CPU 9000",
                          f"this host's own table is {own} (built earlier): pass "
                          f"`--model.cost_table {own}`")
    assert "hwnas costs build" not in line
    assert main(argv + ["--model.budget.fraction=0.6", "--allow-foreign-table=true"]) == 0


def test_a_search_ends_with_its_result_line_and_logs_lr_and_accuracy(tiny_table, tmp_path,
                                                                        capsys):
    """The last line says what ships against what was asked; the learning rate (through
    Lightning's monitor, the cosine schedule checkpointed) and the validation accuracy (a
    torchmetrics object, reset each epoch) reach the logger."""
    import csv

    import torch

    argv = [a for a in search_args(tiny_table, tmp_path) if "logger" not in a and "max_ep" not in a]
    argv += ["--trainer.max_epochs=2", "--trainer.logger=CSVLogger",
             f"--trainer.logger.save_dir={tmp_path}"]
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("shipped member meets its budget: latency_ms "), last
    assert "val acc 0." in last and f"checkpoint {tmp_path}" in last
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    lrs = [float(r["lr-SGD/pg1"]) for r in rows if r.get("lr-SGD/pg1")]  # timm: 2 groups
    assert len(set(lrs)) == 2  # the cosine moved the rate between the two epochs
    accs = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert len(accs) == 2 and all(0 <= a <= 1 for a in accs)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert len(ckpt["lr_schedulers"]) == 1
