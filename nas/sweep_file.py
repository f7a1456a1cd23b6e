"""Sweep files in W&B's own format: reading, expanding into runs, and checking every parameter.

The file (``method``, ``metric``, ``parameters``, ``command`` with the ``${env}``,
``${interpreter}``, ``${program}``, ``${args}`` macros) also works with ``wandb sweep``. A grid
expands to the cartesian product of its values and a random sweep draws seeded runs.
Parameters are checked against the search command's LightningCLI before any run starts.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import itertools
import json
import math
import os
import random
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

METHODS = ("grid", "random", "bayes")
SAMPLERS: dict[str, Callable[[random.Random, dict], Any]] = {
    "constant": lambda rng, p: p["value"],
    "categorical": lambda rng, p: rng.choices(p["values"], weights=p.get("probabilities"))[0],
    "int_uniform": lambda rng, p: rng.randint(int(p["min"]), int(p["max"])),
    "uniform": lambda rng, p: rng.uniform(p["min"], p["max"]),
    "q_uniform": lambda rng, p: _quantize(rng.uniform(p["min"], p["max"]), p.get("q", 1)),
    "log_uniform": lambda rng, p: math.exp(rng.uniform(p["min"], p["max"])),
    "log_uniform_values": lambda rng, p: math.exp(
        rng.uniform(math.log(p["min"]), math.log(p["max"]))),
    "q_log_uniform_values": lambda rng, p: _quantize(
        math.exp(rng.uniform(math.log(p["min"]), math.log(p["max"]))), p.get("q", 1)),
    "normal": lambda rng, p: rng.gauss(p.get("mu", 0.0), p.get("sigma", 1.0)),
    "log_normal": lambda rng, p: math.exp(rng.gauss(p.get("mu", 0.0), p.get("sigma", 1.0))),
}
SEARCH_SUBCOMMANDS = ("fit", "validate", "test")
RESULT, RESULTS, PLOT = "result.json", "sweep_results.json", "sweep_pareto.png"


class SweepError(ValueError):
    """A problem in the sweep file, named by its key and value."""


def _quantize(x: float, q: float) -> float:
    return round(x / q) * q


# -- the sweep file ---------------------------------------------------------------------------
def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check the structure of a W&B sweep file; each parameter gets a ``distribution``."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: expected a mapping with method, parameters and command")
    method = spec.get("method")
    if method not in METHODS:
        raise SweepError(f"method: got {method!r}; use one of {', '.join(METHODS)}")
    metric = spec.get("metric")
    if metric is not None and (not isinstance(metric, dict) or "name" not in metric
                               or metric.get("goal", "minimize") not in ("minimize", "maximize")):
        raise SweepError(f"metric: got {metric!r}; use {{name: final/val_acc, goal: maximize}}")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"parameters: got {params!r}; give at least one, e.g. "
                         "model.budget.fraction: {values: [0.2, 0.5]}")
    spec["parameters"] = {k: _parameter(k, v, method) for k, v in params.items()}
    command = spec.get("command", ["${env}", "${interpreter}", "${program}", "${args}"])
    if not isinstance(command, list) or not all(isinstance(c, str | int | float) for c in command):
        raise SweepError(f"command: got {command!r}; give a list of strings")
    spec["command"] = [str(c) for c in command]
    if "${program}" in spec["command"] and not spec.get("program"):
        raise SweepError("program: the command uses ${program} but the file sets no program")
    spec.setdefault("name", path.stem)
    return spec


def _parameter(key: str, p: Any, method: str) -> dict[str, Any]:
    where = f"parameters.{key}"
    if not isinstance(p, dict):
        raise SweepError(f"{where}: got {p!r}; give {{values: [...]}}, {{value: x}} or "
                         "{distribution: ..., min: ..., max: ...}")
    if "parameters" in p:
        raise SweepError(f"{where}: nested parameters are not LightningCLI options; write each "
                         f"as a dotted key, e.g. {key}.fraction: {{values: [...]}}")
    p = dict(p)
    if "distribution" not in p:
        if "value" in p:
            p["distribution"] = "constant"
        elif "values" in p:
            p["distribution"] = "categorical"
        elif isinstance(p.get("min"), int) and isinstance(p.get("max"), int):
            p["distribution"] = "int_uniform"
        elif "min" in p and "max" in p:
            p["distribution"] = "uniform"
    dist = p.get("distribution")
    if dist not in SAMPLERS:
        raise SweepError(f"{where}.distribution: got {dist!r}; use one of {', '.join(SAMPLERS)}")
    needs = {"constant": ["value"], "categorical": ["values"]}.get(dist, ["min", "max"])
    if dist in ("normal", "log_normal"):
        needs = []
    missing = [n for n in needs if n not in p]
    if missing:
        raise SweepError(f"{where}: distribution {dist} needs {' and '.join(missing)}")
    if needs == ["min", "max"] and not (isinstance(p["min"], int | float) and isinstance(
            p["max"], int | float) and p["min"] <= p["max"] and p.get("q", 1) > 0):
        raise SweepError(f"{where}: needs numbers min <= max (and q > 0), got min={p['min']!r}, "
                         f"max={p['max']!r}")
    if dist.endswith("log_uniform_values") and p["min"] <= 0:
        raise SweepError(f"{where}: {dist} needs min > 0, got {p['min']!r}")
    if dist == "categorical" and (not isinstance(p["values"], list) or not p["values"]):
        raise SweepError(f"{where}.values: got {p['values']!r}; give a non-empty list")
    if method == "grid" and dist not in ("constant", "categorical", "int_uniform", "q_uniform"):
        raise SweepError(f"{where}: method grid needs values (or int_uniform / q_uniform), got "
                         f"distribution {dist}; list the values or use method random")
    return p


def grid_values(p: dict[str, Any]) -> list[Any]:
    """Every value a grid takes for one parameter."""
    dist = p["distribution"]
    if dist == "constant":
        return [p["value"]]
    if dist == "categorical":
        return list(p["values"])
    if dist == "int_uniform":
        return list(range(int(p["min"]), int(p["max"]) + 1))
    q = p.get("q", 1)
    return [_quantize(p["min"] + i * q, q) for i in range(int(round((p["max"] - p["min"]) / q)) + 1)]


def expand(spec: dict[str, Any], count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The runs' parameters: the grid's cartesian product (first ``count``), or ``count`` draws
    from a generator seeded by ``seed`` (run i is the same whatever ``count`` is)."""
    params = spec["parameters"]
    if spec["method"] == "grid":
        grids = [grid_values(p) for p in params.values()]
        runs = [dict(zip(params, combo, strict=True)) for combo in itertools.product(*grids)]
        return runs[:count] if count else runs
    count = count or spec.get("run_cap")
    if not count:
        raise SweepError(f"method {spec['method']}: give the number of runs with --count "
                         "(or run_cap in the file)")
    rng = random.Random(seed)
    return [{k: SAMPLERS[p["distribution"]](rng, p) for k, p in params.items()}
            for _ in range(count)]


def probe_values(p: dict[str, Any]) -> list[Any]:
    """Values that show whether an option accepts a parameter: the listed ones, else the ends."""
    dist = p["distribution"]
    if dist in ("constant", "categorical"):
        return grid_values(p)
    if dist in ("int_uniform", "q_uniform"):
        return [grid_values(p)[0], grid_values(p)[-1]]
    if dist == "log_uniform":
        return [math.exp(p["min"]), math.exp(p["max"])]
    if dist in ("normal", "log_normal"):
        return [SAMPLERS[dist](random.Random(0), p)]
    return [p["min"], p["max"]]


def run_id(params: dict[str, Any]) -> str:
    """Stable id of a run: a hash of its parameters (so a rerun finds its directory)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def format_args(params: dict[str, Any]) -> dict[str, list[str]]:
    """The ``${args…}`` macros, formatted as W&B's sweep runner formats them (``--key=value``)."""
    pairs = list(params.items())
    return {
        "args": [f"--{k}={v}" for k, v in pairs],
        "args_no_hyphens": [f"{k}={v}" for k, v in pairs],
        "args_no_equals": [x for k, v in pairs for x in (f"--{k}", str(v))],
        "args_no_boolean_flags": [f"--{k}" if v is True else f"--{k}={v}" for k, v in pairs
                                  if v is not False],
        "args_json": [json.dumps(dict(pairs))],
    }


def build_command(spec: dict[str, Any], params: dict[str, Any], run_dir: Path | None = None
                  ) -> list[str]:
    """The run's argv: macros filled in; ``${env}`` is dropped (the PATH lookup is ours)."""
    macros = format_args(params) | {"env": [], "interpreter": [sys.executable],
                                    "program": [str(spec.get("program"))]}
    if run_dir is not None:
        macros["args_json_file"] = [str(run_dir / "args.json")]
    argv = []
    for token in spec["command"]:
        token = re.sub(r"\$\{envvar:([A-Z0-9_]*)\}",
                       lambda m: os.environ.get(m.group(1), m.group(1)), token)
        if token.startswith("${") and token.endswith("}"):
            if token[2:-1] not in macros:
                raise SweepError(f"command: unknown macro {token}; use ${{env}}, "
                                 "${interpreter}, ${program} or ${args}")
            argv += macros[token[2:-1]]
        else:
            argv.append(token)
    return argv


def search_args(argv: list[str]) -> tuple[int, str] | None:
    """(index after the subcommand, subcommand) when ``argv`` runs ``… search fit|validate|test``."""
    for i, token in enumerate(argv[:-1]):
        if token == "search" and argv[i + 1] in SEARCH_SUBCOMMANDS:
            return i + 2, argv[i + 1]
    return None


# -- checking the parameters against the search command's LightningCLI -------------------------
class _Rejected(Exception):
    """The search command's parser refused the arguments; the message is its own."""


def print_config(args: list[str]) -> dict[str, Any]:
    """The config that ``hwnas search ARGS --print_config`` resolves (parsed only: nothing is
    built or trained), or ``_Rejected`` with the parser's error message."""
    from nas.search_cli import search_command

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. LightningCLI's note that sys.argv is not parsed
        try:
            search_command([*args, "--print_config"])
        except SystemExit as e:
            code = e.code
    if code not in (0, None):
        raise _Rejected(err.getvalue().rpartition("error:")[2].strip() or f"exit code {code}")
    return yaml.safe_load(out.getvalue()) or {}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config: ``{"model.budget.fraction": 0.3, …}``."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def canonical(key: str, keys: dict[str, Any]) -> str:
    """Where LightningCLI stores ``key``: ``data.num_samples`` → ``data.init_args.num_samples``
    when ``data`` is given as a class_path."""
    parts, path = key.split("."), []
    for i, part in enumerate(parts):
        path.append(part)
        prefix = ".".join(path)
        rest = parts[i + 1:]
        if rest and f"{prefix}.class_path" in keys and rest[0] not in ("class_path", "init_args"):
            path.append("init_args")
    return ".".join(path)


def is_option(name: str, base: dict[str, Any]) -> bool | None:
    """Whether the resolved config has option ``name``; None when a leaf on the way (an option
    that is None, such as an unset dataclass) leaves the answer to the parser."""
    if name in base:
        return True
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in base:
            return None
        if any(k.startswith(prefix + ".") for k in base):
            return False
    return False


def check_options(spec: dict[str, Any], subcommand: str, args: list[str]) -> dict[str, Any]:
    """Raise SweepError unless every parameter is an option of ``hwnas search SUBCOMMAND`` that
    accepts its values; returns the command's own resolved config (dotted keys)."""
    try:
        base = flatten(print_config([subcommand, *args]))
    except _Rejected as e:
        raise SweepError(f"command: `hwnas search {subcommand} {' '.join(args)}` is rejected "
                         f"before any parameter is added: {e}") from None
    names, siblings = {}, {}
    for key in spec["parameters"]:
        names[key] = name = canonical(key, base)
        parent = name.rpartition(".")[0]
        siblings[key] = [k for k in base if k.rpartition(".")[0] == parent] if parent else []
        if is_option(name, base) is False:
            close = difflib.get_close_matches(name, list(base), n=1)
            raise SweepError(
                f"parameters.{key}: not an option of `hwnas search {subcommand}`"
                + (f"; did you mean {close[0].replace('.init_args', '')}?" if close else "")
                + f" (see `hwnas search {subcommand} --help`)")

    def problem(values: dict[str, Any]) -> str | None:
        """Why the search's parser refuses these parameter values, or None."""
        try:
            cfg = flatten(print_config([subcommand, *args, *format_args(values)["args"]]))
        except _Rejected as e:
            return f"is rejected: {e}"
        for key, value in values.items():
            # an option typed `Dataclass | dict` takes a bad value as a plain dict, dropping
            # the other fields: caught here rather than as a TypeError when the run starts
            if names[key] in base and not all(k in cfg for k in siblings[key]):
                hint = " (write null as the string 'null')" if value is None else ""
                return f"is not valid for this option{hint}; see `hwnas search {subcommand} --help`"
        return None

    # one parse per round, each round taking the next probe value of every parameter
    probes = {key: probe_values(p) for key, p in spec["parameters"].items()}
    for j in range(max(len(v) for v in probes.values())):
        values = {key: v[j] for key, v in probes.items() if j < len(v)}
        why = problem(values)
        if why is None:
            continue
        for key, value in values.items():
            alone = why if len(values) == 1 else problem({key: value})
            if alone:
                raise SweepError(f"parameters.{key}: value {value!r} {alone}")
        raise SweepError(f"parameters: the values {values} {why}")
    return base


