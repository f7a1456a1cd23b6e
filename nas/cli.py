"""The `hwnas` command: one subcommand per user task, registered in `COMMANDS`.

Each subcommand parses its own arguments (so `search` can hand them to LightningCLI untouched)
and imports its heavy dependencies only when it runs, which keeps `hwnas --help` instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nas.quiet import quiet_lightning


@dataclass(frozen=True)
class Command:
    """A subcommand: one help line, and a function of its argv returning an exit code."""

    help: str
    run: Callable[[list[str]], int | None]


def space_command(argv: list[str]) -> int:
    """Print the decisions of a search-space YAML: keys, kinds and choices."""
    parser = argparse.ArgumentParser(prog="hwnas space", description=COMMANDS["space"].help)
    parser.add_argument("space_file", help="search-space YAML, e.g. configs/spaces/<name>.yaml")
    args = parser.parse_args(argv)
    if not Path(args.space_file).is_file():
        parser.error(f"space_file {args.space_file!r} does not exist")

    from supernet import SearchSpace, SpaceError, SuperNet

    try:
        space = SearchSpace.from_yaml(args.space_file)
    except SpaceError as error:
        parser.error(f"{args.space_file}: {error}")
    describe = getattr(space, "describe", None)
    print(describe() if callable(describe) else space)
    shared = sum(p.numel() for p in SuperNet(space).parameters())
    print(f"  {shared:,} shared supernet parameters")
    return 0


def search_command(argv: list[str]) -> int:
    """Run the search with LightningCLI (fit / validate / test)."""
    from nas.search_cli import search_command as run

    return run(argv)


def costs_command(argv: list[str]) -> int:
    """Build, import and check hardware cost tables."""
    from costmodels.cli import main as run

    return run(argv)


def sweep_command(argv: list[str]) -> int:
    """Run a W&B sweep file without a W&B server (offline runs, resumable)."""
    from nas.sweeps.run import sweep_command as run

    return run(argv)


def export_command(argv: list[str]) -> int:
    """Export a search's nested family: family.pt, members, ONNX, Pareto front."""
    from nas.family.export import export_command as run

    return run(argv)


def quickstart_command(argv: list[str]) -> int:
    """Fashion-MNIST end to end: cost table, short search, family export, Pareto table."""
    from nas.quickstart import quickstart_command as run

    return run(argv)


def adapt_command(argv: list[str]) -> int:
    """Stream inputs through a family under a deadline and a load scenario."""
    from deploy.adapt import run_command as run

    def price_energy(space, configs, target):  # mJ per inference from an analytic table
        from costmodels.analytic import build_analytic_table
        from costmodels.expected import table_cost

        table = build_analytic_table(space, target)
        return {n: table_cost(space, table, c, "energy_mj") for n, c in configs.items()}

    return run(argv, price_energy)


# name -> Command
COMMANDS: dict[str, Command] = {
    "space": Command("show the decisions of a search-space YAML", space_command),
    "costs": Command("build, import and check hardware cost tables", costs_command),
    "search": Command("train the supernet and α under a budget (LightningCLI: fit/validate/test)",
                      search_command),
    "sweep": Command("run a W&B sweep file without a W&B server (grid/random, resumable)",
                     sweep_command),
    "export": Command("export a search's nested family: family.pt, members, ONNX, Pareto front",
                      export_command),
    "quickstart": Command("Fashion-MNIST end to end: cost table, short search, family export",
                          quickstart_command),
    "run": Command("stream inputs through a family under a deadline and a changing load",
                   adapt_command),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hwnas")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; it lists the subcommands and parses nothing past the name."""
    parser = argparse.ArgumentParser(
        prog="hwnas",
        description="Differentiable hardware-aware neural architecture search.",
        epilog="Run `hwnas COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"hwnas {_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name, command in COMMANDS.items():
        subparsers.add_parser(name, help=command.help, add_help=False)
    return parser


DEBUG_ENV = "HWNAS_DEBUG"
# errors that describe the user's input (a file, a value, a budget): their message is the report
INPUT_ERRORS = (ValueError, LookupError, OSError, FloatingPointError)


def run_command(name: str, argv: list[str]) -> int:
    """Run a subcommand; an error ends it with one line on stderr, not a traceback (set
    HWNAS_DEBUG=1 or pass --debug for the traceback)."""
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    quiet_lightning()
    try:
        return COMMANDS[name].run(argv) or 0
    except KeyboardInterrupt:
        print(f"hwnas {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        print(f"hwnas {name}: error: {one_line(error)}", file=sys.stderr)
        return 1


def one_line(error: Exception) -> str:
    """The error's message on one line; an unexpected kind of error also names its type and
    how to see the traceback."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, FileNotFoundError) and error.filename and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    if isinstance(error, INPUT_ERRORS) and text:
        return text
    return (f"{type(error).__name__}: {text or 'no message'} "
            f"(run again with {DEBUG_ENV}=1 for the traceback)")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return run_command(args[0], args[1:])
    parser = build_parser()
    parser.parse_args(args)  # handles --help / --version, rejects unknown commands
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
