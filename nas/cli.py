"""The `hwnas` command: one subcommand per user task, registered in `COMMANDS`.

Each subcommand parses its own arguments (so `search` can hand them to LightningCLI untouched)
and imports its heavy dependencies only when it runs, which keeps `hwnas --help` instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


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
    from nas.sweep import sweep_command as run

    return run(argv)


def export_command(argv: list[str]) -> int:
    """Export a search's nested family: family.pt, members, ONNX, Pareto front."""
    from nas.export import export_command as run

    return run(argv)


def quickstart_command(argv: list[str]) -> int:
    """Fashion-MNIST end to end: cost table, short search, family export, Pareto table."""
    from nas.quickstart import quickstart_command as run

    return run(argv)


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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return COMMANDS[args[0]].run(args[1:]) or 0
    parser = build_parser()
    parser.parse_args(args)  # handles --help / --version, rejects unknown commands
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
