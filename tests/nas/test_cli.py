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
