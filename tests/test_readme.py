"""The README is the front door: its Python blocks run as written, and its `hwnas` command lines
name real commands whose options the command accepts."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from nas.cli import COMMANDS
from tests.conftest import ROOT, synthetic_data

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [code for lang, code in BLOCKS if lang == "bash"]


def command_lines(code: str) -> list[str]:
    """Each command of a bash block, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.split(" #")[0].strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


HWNAS = [line for code in SHELL for line in command_lines(code)
         if re.match(r"(srun )?hwnas ", line)]


@pytest.fixture(scope="module")
def workdir(tiny_search, tmp_path_factory):
    """A user's checkout after the README's commands: the configs and an exported family at
    the path the README uses (a tiny one, so the test takes seconds)."""
    from nas.family.export import export_family

    d = tmp_path_factory.mktemp("readme")
    (d / "configs").symlink_to(ROOT / "configs")
    export_family(tiny_search[0], d / "exports" / "fmnist", synthetic_data(), members=2,
                  samples=1, recal_batches=2, latency_repeats=2, progress=False)
    return d


def test_readme_has_code_to_check():
    assert PYTHON and HWNAS


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_block_runs_as_written(index, workdir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", PYTHON[index]], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"README python block {index}:\n{PYTHON[index]}\n{run.stderr}"


@pytest.mark.parametrize("line", HWNAS)
def test_hwnas_lines_name_real_commands(line):
    words = shlex.split(line.removeprefix("srun "))
    assert words[1] in COMMANDS, line


@pytest.mark.slow
@pytest.mark.parametrize("line", [h for h in HWNAS if " search fit " in h])
def test_search_lines_have_options_the_search_accepts(line):
    """`--print_config` parses every option without training."""
    words = shlex.split(line.removeprefix("srun "))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "nas", *words[1:], "--print_config"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{line}\n{run.stderr[-2000:]}"
