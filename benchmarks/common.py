"""What the benchmarks share: the two modes, run options, the machine, clocks, data, cost
tables, result files and the command line of a single figure.

Quick mode: the tiny space, synthetic data and a table measured here in seconds (a smoke test,
minutes in all). Full mode: the Fashion-MNIST space and data with the repository's measured CPU
table (``configs/tables/fmnist_cpu.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from costmodels.profile import device_name

ROOT = Path(__file__).resolve().parents[1]
TINY_SPACE = ROOT / "configs" / "spaces" / "tiny.yaml"
FMNIST_SPACE = ROOT / "configs" / "spaces" / "fmnist.yaml"
FMNIST_TABLE = ROOT / "configs" / "tables" / "fmnist_cpu.json"
SEARCH_CONFIGS = {True: ROOT / "configs" / "search" / "tiny.yaml",
                  False: ROOT / "configs" / "search" / "fmnist.yaml"}


@dataclass(frozen=True)
class Mode:
    """Sizes of one benchmark mode; ``limit`` is training batches per epoch."""

    quick: bool
    space_file: Path
    batch_size: int
    epochs: int
    limit: int
    members: int
    recal_batches: int
    latency_repeats: int
    classifier_batches: int  # batches each member's exit classifiers are refit on

    @property
    def name(self) -> str:
        return "quick" if self.quick else "full"


QUICK = Mode(True, TINY_SPACE, batch_size=32, epochs=2, limit=8, members=3, recal_batches=4,
             latency_repeats=10, classifier_batches=4)
FULL = Mode(False, FMNIST_SPACE, batch_size=128, epochs=3, limit=50, members=4,
            recal_batches=20, latency_repeats=30, classifier_batches=100)


_MODES = {True: QUICK, False: FULL}


def mode(quick: bool) -> Mode:
    return _MODES[quick]


def set_training_length(quick: bool, epochs: int | None = None, limit: int | None = None,
                        members: int | None = None) -> Mode:
    """Train the mode's search and from-scratch networks longer or shorter, or export more
    members (use a fresh results folder: the shared search is cached per folder)."""
    changes = {k: v for k, v in (("epochs", epochs), ("limit", limit), ("members", members))
               if v is not None}
    _MODES[quick] = replace(_MODES[quick], **changes)
    return _MODES[quick]


@dataclass
class Options:
    """Run options every figure accepts as keyword arguments of ``run``."""

    accelerator: str = "cpu"  # "cpu" or "gpu": where training runs (latency is always CPU)
    data_dir: str | None = None  # Fashion-MNIST root (default: the system's files)
    threads: int | None = None  # intra-op threads for training (default: quick 1, full all)
    progress: bool = False
    command: str = ""  # the command line recorded with each result

    @property
    def device(self) -> torch.device:
        if self.accelerator == "gpu":
            if not torch.cuda.is_available():
                raise RuntimeError("--accelerator gpu: no CUDA device is available here; "
                                   "run with --accelerator cpu")
            return torch.device("cuda")
        if self.accelerator != "cpu":
            raise ValueError(f"accelerator: must be cpu or gpu, got {self.accelerator!r}")
        return torch.device("cpu")


def options(**kwargs: Any) -> Options:
    return Options(**{k: v for k, v in kwargs.items() if v is not None})


# -- the machine and result files -------------------------------------------------------------
def cpu_model() -> str:
    return device_name(torch.device("cpu"))


def machine_info(opts: Options) -> dict[str, Any]:
    """What a figure was measured on: cores, CPU model, torch version, GPU (if used)."""
    info = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": cpu_model(), "torch": torch.__version__, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "accelerator": opts.accelerator,
    }
    if opts.accelerator == "gpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, int | str | bool) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_result(out_dir: str | Path, name: str, quick: bool, opts: Options,
                 settings: Mapping[str, Any], results: Mapping[str, Any],
                 headline: Mapping[str, float]) -> dict[str, Any]:
    """Write ``<out_dir>/<name>.json``: the figure's headline numbers, full results, settings,
    machine, date and command; returns the same dict."""
    doc = {
        "figure": name, "mode": mode(quick).name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": opts.command or f"python -m benchmarks.{name} --{mode(quick).name}",
        "machine": machine_info(opts), "settings": jsonable(settings),
        "headline": jsonable(headline), "results": jsonable(results),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- clocks -----------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Clock:
    """Accumulated wall and process-CPU seconds (CPU time is less inflated by other load)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    count: int = 0
    laps_ms: list[float] = field(default_factory=list)

    @contextmanager
    def lap(self, device: torch.device) -> Iterator[None]:
        sync(device)
        w, c = time.perf_counter(), time.process_time()
        yield
        sync(device)
        dw = time.perf_counter() - w
        self.wall_s += dw
        self.cpu_s += time.process_time() - c
        self.count += 1
        self.laps_ms.append(dw * 1e3)

    def summary(self) -> dict[str, float]:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "steps": self.count}


# -- data and tables --------------------------------------------------------------------------
@lru_cache(maxsize=8)
def datamodule(quick: bool, data_dir: str | None = None, batch_size: int | None = None,
               seed: int = 0):
    """The mode's data module, set up (cached: Fashion-MNIST is read once per process)."""
    from nas.data.splits import FashionMNISTDataModule, SyntheticDataModule

    bs = batch_size or mode(quick).batch_size
    if quick:
        dm = SyntheticDataModule(num_samples=640, num_test=256, batch_size=bs, data_seed=seed)
    else:
        dm = FashionMNISTDataModule(data_dir=data_dir, batch_size=bs, data_seed=seed)
    dm.setup("fit")
    return dm


def load_space(quick: bool):
    from supernet import SearchSpace

    return SearchSpace.from_yaml(mode(quick).space_file)


def table_path(quick: bool, out_dir: str | Path) -> Path:
    """Full: the repository's measured CPU table. Quick: the tiny space timed here (seconds;
    one thread, thread clock, as the full table was made)."""
    if not quick:
        return FMNIST_TABLE
    path = Path(out_dir) / "shared" / "tiny_cpu.json"
    if not path.is_file():
        from costmodels import build_measured_table

        path.parent.mkdir(parents=True, exist_ok=True)
        table = build_measured_table(load_space(True), "cpu", threads=1, warmup=3, repeats=15,
                                     space_file=str(TINY_SPACE), progress=False, clock="thread")
        table.save(path)
    return path


def load_table(quick: bool, out_dir: str | Path):
    from costmodels import CostTable

    return CostTable.load(table_path(quick, out_dir))


def quiet() -> None:
    """Keep Lightning's per-run banners and known harmless warnings out of the table."""
    import pytorch_lightning  # noqa: F401  (their loggers exist once they are imported)
    import timm.scheduler  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("pytorch_lightning", "lightning", "lightning_fabric", "timm"):
            logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Memory block of unknown size.*")
    warnings.filterwarnings("ignore", message=".*t_initial = t_mul = eta_mul = 1.*")


# -- command line of a single figure -----------------------------------------------------------
def main(name: str, run: Callable[..., dict], argv: list[str] | None = None, *,
         whole_argv: list[str] | None = None) -> int:
    """``python -m benchmarks.<name> --quick|--full [--out DIR] [--accelerator gpu]``.
    ``whole_argv``: the command line as typed, when ``argv`` is what a module's own options
    left of it (the result file records the whole command, so it reruns as it ran)."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}")
    add_common_args(parser)
    args = parser.parse_args(argv)
    quiet()
    typed = whole_argv if whole_argv is not None else argv
    opts = options_from_args(args, f"python -m benchmarks.{name} " + " ".join(
        sys.argv[1:] if typed is None else typed))
    out = Path(args.out or default_out(not args.full))
    out.mkdir(parents=True, exist_ok=True)  # figures write their plots into it
    doc = run(not args.full, out, **asdict(opts))
    print(json.dumps(doc["headline"], indent=1))
    return 0


def add_common_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true",
                       help="smoke-level: tiny space, synthetic data (default)")
    group.add_argument("--full", action="store_true", help="Fashion-MNIST (up to an hour)")
    parser.add_argument("--out", default=None,
                        help="results folder (default runs/benchmarks/<mode>)")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu",
                        help="where training runs; latency is always measured on the CPU")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for training (default: quick 1, full all cores)")
    parser.add_argument("--data-dir", default=None,
                        help="Fashion-MNIST root (default: /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of the search and of every from-scratch network "
                             "(default: quick 2, full 3)")
    parser.add_argument("--limit-train-batches", type=int, default=None,
                        help="training batches per epoch (default: quick 8, full 50)")
    parser.add_argument("--members", type=int, default=None,
                        help="family members exported besides the shipped one "
                             "(default: quick 3, full 4)")


def default_out(quick: bool) -> str:
    return str(ROOT / "runs" / "benchmarks" / mode(quick).name)


def options_from_args(args: argparse.Namespace, command: str) -> Options:
    quick = not args.full
    threads = args.threads or (1 if quick else len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)
    set_training_length(quick, args.epochs, args.limit_train_batches, args.members)
    return Options(accelerator=args.accelerator, data_dir=args.data_dir, threads=threads,
                   progress=args.progress, command=command)


def with_options(opts: Options, **changes: Any) -> Options:
    return replace(opts, **changes)


def save_axes(fig, ax, path: Path) -> Path:
    """Grid, legend, tight layout, PNG: how every figure here ends."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
