"""Sweep files in W&B's own format: read and check them, draw their runs, build each command.

W&B's machinery does the work where it runs offline: its sweep engine (the ``sweeps`` package,
what W&B's local controller runs) checks the file against W&B's schema and draws the runs —
grid, random and bayes (a Gaussian process over the finished runs) — and the W&B agent's own
helpers format the ``${args…}`` macros. Hand-written, because W&B exposes no function for it:
the few checks that name the key and the fix, the substitution of the macros into the command
(inline in the agent's ``Agent._command_run``), seeding the engine (it draws from the global
``random`` / ``numpy.random`` generators) and checking parameter names and values against the
search command's own parser.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import random
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

METHODS = ("grid", "random", "bayes")
SEARCH_SUBCOMMANDS = ("fit", "validate", "test")
RESULT, RECORD = "result.json", "sweep_run.json"  # the run's own result; the sweep's record
RESULTS, PLOT = "sweep_results.json", "sweep_pareto.png"


class SweepError(ValueError):
    """A problem in the sweep file, named by its key and value."""


def _engine():
    """W&B's sweep engine, imported quietly (its pydantic model config warns on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import sweeps
            from sweeps.config.schema import dereferenced_sweep_config_jsonschema as schema
            from sweeps.params import HyperParameter
        except ImportError as e:
            raise SweepError(f"W&B's sweep engine is missing ({e}): install it with `pip install "
                             "-c constraints.txt --no-deps sweeps` (as `make install` does)"
                             ) from None
    return sweeps, schema, HyperParameter


# -- the sweep file ---------------------------------------------------------------------------
def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read a W&B sweep file and check it: our checks name the key and the fix, then W&B's
    schema has the last word."""
    sweeps, schema, _ = _engine()
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: expected a mapping with method, parameters and command")
    if spec.get("method") not in METHODS:
        raise SweepError(f"method: got {spec.get('method')!r}; use one of {', '.join(METHODS)}")
    metric = spec.get("metric")
    if metric is None and spec["method"] == "bayes":
        raise SweepError("metric: method bayes needs the metric it optimizes, e.g. "
                         "{name: final/val_acc, goal: maximize}")
    if metric is not None and (not isinstance(metric, dict) or "name" not in metric
                               or metric.get("goal", "minimize") not in ("minimize", "maximize")):
        raise SweepError(f"metric: got {metric!r}; use {{name: final/val_acc, goal: maximize}}")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"parameters: got {params!r}; give at least one, e.g. "
                         "model.budget.fraction: {values: [0.2, 0.5]}")
    known = sorted({d for s in schema["definitions"].values() for d in
                    s.get("properties", {}).get("distribution", {}).get("enum", [])})
    for key, p in params.items():
        _check_parameter(f"parameters.{key}", p, spec["method"], known)
    command = spec.get("command", ["${env}", "${interpreter}", "${program}", "${args}"])
    if not isinstance(command, list) or not all(isinstance(c, str | int | float) for c in command):
        raise SweepError(f"command: got {command!r}; give a list of strings")
    spec["command"] = [str(c) for c in command]
    if "${program}" in spec["command"] and not spec.get("program"):
        raise SweepError("program: the command uses ${program} but the file sets no program")
    violations = sweeps.schema_violations_from_proposed_config(spec)
    if violations:
        raise SweepError(f"{violations[0]} (W&B's sweep schema)")
    spec.setdefault("name", path.stem)
    return spec


def _check_parameter(where: str, p: Any, method: str, known: list[str]) -> None:
    _, _, HyperParameter = _engine()
    if not isinstance(p, dict):
        raise SweepError(f"{where}: got {p!r}; give {{values: [...]}}, {{value: x}} or "
                         "{distribution: ..., min: ..., max: ...}")
    if "parameters" in p:
        raise SweepError(f"{where}: nested parameters are not LightningCLI options; write each "
                         f"as a dotted key, e.g. {where.partition('.')[2]}.fraction: "
                         "{values: [...]}")
    if "distribution" in p and p["distribution"] not in known:
        raise SweepError(f"{where}.distribution: got {p['distribution']!r}; use one of "
                         f"{', '.join(known)}")
    try:
        kind = HyperParameter(where, p).type
    except ValueError as e:  # e.g. min above max
        raise SweepError(str(e)) from None
    except Exception:  # noqa: BLE001 - the schema's own error names neither key nor fix
        raise SweepError(f"{where}: got {p!r}, which W&B's sweep schema refuses; give "
                         "{values: [...]} (not empty), {value: x} or {distribution: ..., min: "
                         "..., max: ...} (min > 0 for log distributions)") from None
    if method == "grid" and kind not in (HyperParameter.CONSTANT, HyperParameter.CATEGORICAL,
                                         HyperParameter.INT_UNIFORM, HyperParameter.Q_UNIFORM):
        raise SweepError(f"{where}: method grid needs values (or int_uniform / q_uniform), got "
                         f"{p}; list the values or use method random")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The engine draws from the global ``random`` and ``numpy.random`` generators: seed them
    for its draws, then give back their state."""
    state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


def _plain(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A run's parameters from the engine's ``{key: {"value": v}}``: in the file's order (the
    engine sorts them), numpy scalars as Python's."""
    values = {k: v["value"] for k, v in config.items()}
    return {k: values[k].item() if isinstance(values[k], np.generic) else values[k]
            for k in spec["parameters"]}


def expand(spec: dict[str, Any], count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The runs' parameters: the grid (first ``count``), or ``count`` seeded random draws (run
    i is the same whatever ``count`` is). Bayes draws one run at a time: see `propose`."""
    sweeps, _, _ = _engine()
    if spec["method"] == "grid":  # the engine stops (a None) when the grid is exhausted
        return [_plain(spec, r.config) for r in sweeps.next_runs(spec, [], n=count or sys.maxsize)
                if r is not None]
    count = count or spec.get("run_cap")
    if not count:
        raise SweepError(f"method {spec['method']}: give the number of runs with --count "
                         "(or run_cap in the file)")
    if spec["method"] == "bayes":
        return []
    with _seeded(seed):
        return [_plain(spec, r.config) for r in sweeps.next_runs(spec, [], n=count)]


def propose(spec: dict[str, Any], history: list[tuple[dict[str, Any], str, dict[str, Any]]],
            seed: int = 0) -> dict[str, Any]:
    """Bayes: the next run's parameters from W&B's Gaussian-process search, given every run so
    far as (parameters, state: finished | failed | running, summary with the metric)."""
    sweeps, _, _ = _engine()
    runs = [sweeps.SweepRun(config={k: {"value": v} for k, v in params.items()}, state=state,
                            summary_metrics=summary) for params, state, summary in history]
    with _seeded(seed + len(runs)), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the GP's convergence warnings on a few points
        return _plain(spec, sweeps.next_run(spec, runs).config)


def run_id(params: dict[str, Any]) -> str:
    """Stable id of a run: a hash of its parameters (so a rerun finds its directory)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def format_args(params: dict[str, Any]) -> dict[str, list[str]]:
    """The ``${args…}`` macros, from the W&B agent's own formatter (``--key=value``, …)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})


def build_command(spec: dict[str, Any], params: dict[str, Any], run_dir: Path | None = None
                  ) -> list[str]:
    """The run's argv, as the W&B agent builds it (``${envvar:…}`` by W&B's helper), except that
    ``${env}`` is dropped (the PATH lookup is ours) and ``${interpreter}`` is this Python."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command

    macros = format_args(params) | {"env": [], "interpreter": [sys.executable],
                                    "program": [str(spec.get("program"))]}
    if run_dir is not None:
        macros["args_json_file"] = [str(run_dir / "args.json")]
    argv = []
    for token in create_sweep_command(list(spec["command"])):
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


# -- checking the parameters against the search command's parser -------------------------------
def search_parser():
    """The parser of ``hwnas search``, built by its own LightningCLI and returned before it
    parses anything (LightningCLI builds its parser only inside ``__init__``, which then goes
    on to instantiate and run; ``parse_arguments`` is the hook between the two). Its errors
    raise instead of exiting."""
    from nas.search_cli import SearchCLI, search_command

    class Built(Exception):
        pass

    class ParserOnly(SearchCLI):
        def init_parser(self, **kwargs):
            return super().init_parser(**kwargs, exit_on_error=False)

        def parse_arguments(self, parser, args) -> None:
            raise Built(parser)

    try:
        search_command([], cli=ParserOnly)
    except Built as built:
        return built.args[0]
    raise AssertionError("LightningCLI parsed before building its parser")


def _parse(parser, argv: list[str]) -> dict[str, Any]:
    """The dotted keys of the config ``argv`` resolves to, or SweepError with the parser's
    most telling line."""
    import jsonargparse

    try:
        cfg = parser.parse_args(argv)
    except jsonargparse.ArgumentError as e:
        lines = [line.strip().removeprefix("- ") for line in str(e).splitlines()]
        why = next((line for line in lines if line.startswith(("Expected", "Option"))
                    and "NoneType" not in line), lines[0] or "rejected")
        raise SweepError(why.removeprefix("error: ")) from None
    return dict(cfg[argv[0]].items(branches=False))


def canonical(key: str, keys: dict[str, Any]) -> str:
    """Where LightningCLI stores ``key``: ``data.num_samples`` → ``data.init_args.num_samples``
    when ``data`` is given as a class_path."""
    parts, path = key.split("."), []
    for i, part in enumerate(parts):
        path.append(part)
        rest = parts[i + 1:]
        if rest and f"{'.'.join(path)}.class_path" in keys and rest[0] not in (
                "class_path", "init_args"):
            path.append("init_args")
    return ".".join(path)


def is_option(name: str, base: dict[str, Any]) -> bool:
    """Whether the resolved config has option ``name``, or a leaf on its way that is None (an
    unset dataclass: the parser then judges the value)."""
    parts = name.split(".")
    return any(".".join(parts[:i]) in base for i in range(len(parts), 0, -1))


def probe_values(p: dict[str, Any]) -> list[Any]:
    """Values that show whether an option accepts a parameter: the listed ones, else the
    distribution's 0.1% and 99.9% quantiles (its ends, or near them when it has none)."""
    _, _, HyperParameter = _engine()
    if "value" in p:
        return [p["value"]]
    if "values" in p:
        return list(p["values"])
    hp = HyperParameter("probe", p)
    return [v.item() if isinstance(v, np.generic) else v
            for v in (hp.ppf(0.001), hp.ppf(0.999))]


def check_options(spec: dict[str, Any], subcommand: str, args: list[str]) -> dict[str, Any]:
    """Raise SweepError unless every parameter is an option of ``hwnas search SUBCOMMAND`` that
    accepts its values; returns the command's own resolved config (dotted keys)."""
    parser, command = search_parser(), f"hwnas search {subcommand}"
    try:
        base = _parse(parser, [subcommand, *args])
    except SweepError as e:
        raise SweepError(f"command: `{command} {' '.join(args)}` is rejected before any "
                         f"parameter is added: {e}") from None
    for key in spec["parameters"]:
        if not is_option(canonical(key, base), base):
            close = difflib.get_close_matches(canonical(key, base), list(base), n=1)
            raise SweepError(
                f"parameters.{key}: not an option of `{command}`"
                + (f"; did you mean {close[0].replace('.init_args', '')}?" if close else "")
                + f" (see `{command} --help`)")
    # one parse per round, each round taking the next probe value of every parameter
    probes = {key: probe_values(p) for key, p in spec["parameters"].items()}
    for j in range(max(len(v) for v in probes.values())):
        values = {key: v[j] for key, v in probes.items() if j < len(v)}
        try:
            _parse(parser, [subcommand, *args, *format_args(values)["args"]])
        except SweepError as e:
            for key, value in values.items():
                try:
                    _parse(parser, [subcommand, *args, *format_args({key: value})["args"]])
                except SweepError as alone:
                    hint = " (write null as the string 'null')" if value is None else ""
                    raise SweepError(f"parameters.{key}: value {value!r} is rejected: "
                                     f"{alone}{hint}") from None
            raise SweepError(f"parameters: the values {values} are rejected: {e}") from None
    return base
