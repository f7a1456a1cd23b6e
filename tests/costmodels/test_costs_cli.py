import argparse
import json
from pathlib import Path

import pytest

from costmodels import CostTable
from costmodels.cli import main, register

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "spaces" / "tiny.yaml")


def test_register_adds_the_costs_command():
    parser = argparse.ArgumentParser(prog="hwnas")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["costs", "build", "--space", TINY, "--target", "fpga",
                              "--out", "t.json"])
    assert callable(args.func) and args.batch == 1 and args.threads == 1


def test_build_analytic_then_refuse_to_check_it(tmp_path, capsys):
    out = tmp_path / "fpga.json"
    assert main(["build", "--space", TINY, "--target", "fpga", "--out", str(out)]) == 0
    table = CostTable.load(out)
    assert table.meta.target == "fpga" and table.meta.space_file == TINY
    assert main(["check", "--space", TINY, "--table", str(out), "--samples", "2"]) == 2
    assert "measured" in capsys.readouterr().err


def test_build_measured_and_check(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    assert main(["build", "--space", TINY, "--target", "cpu", "--out", str(out),
                 "--warmup", "1", "--repeats", "3"]) == 0
    assert main(["check", "--space", TINY, "--table", str(out), "--samples", "2",
                 "--fit-samples", "3", "--repeats", "3", "--out", str(tmp_path / "fid"),
                 "--allow-foreign-table",  # the probe's verdict is timing: not asserted
                 "--write-corrected", str(tmp_path / "corrected.json")]) == 0
    assert "MAPE" in capsys.readouterr().out
    report = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert report["additive"]["n"] == 4 and (tmp_path / "fid" / "fidelity.png").is_file()
    assert set(report["models"]) >= {"table + overhead", "learned MLP on table features",
                                     "analytic roofline (fitted)"}
    corrected = CostTable.load(tmp_path / "corrected.json")
    assert corrected.entries == CostTable.load(out).entries
    assert corrected.correction["latency_ms"]["a"] == pytest.approx(report["correction"]["a"])


def test_import_csv_checks_coverage(tmp_path):
    out = tmp_path / "t.json"
    main(["build", "--space", TINY, "--target", "mcu", "--out", str(out)])
    csv_path = CostTable.load(out).to_csv(tmp_path / "t.csv")
    imported = tmp_path / "imported.json"
    assert main(["import", "--csv", str(csv_path), "--target", "mcu", "--space", TINY,
                 "--out", str(imported)]) == 0
    assert CostTable.load(imported).meta.space == "tiny"


def test_unknown_target_is_an_error(tmp_path):
    assert main(["build", "--space", TINY, "--target", "tpu9000", "--out",
                 str(tmp_path / "x.json")]) == 2
    with pytest.raises(SystemExit):
        main(["build", "--space", TINY])  # --target and --out are required
