"""Does a measured table describe this host? Provenance and a probe of reference layers.

A measured table records the machine and software it was timed on (`host_info`) and the raw
times of a few reference signatures (``meta.probe``, ms). Before its numbers are trusted as
milliseconds here, `check_host` compares the recorded machine with this one and re-times the
reference signatures (about a second): another CPU / GPU, or a median drift beyond ±10%, means
the table is foreign. The verdict is one line that says why and gives the rebuild command.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from costmodels.signature import OpSignature
from costmodels.table import CostTable, TableError
from costmodels.timing import time_interleaved
from supernet.space import SearchSpace

DRIFT = 0.10  # a probe further than ±10% from the table means the table is foreign
PROBE_SIGNATURES = 5
PROBE_WARMUP, PROBE_REPEATS = 5, 20
CACHE_DIR = Path("runs") / "tables"


class ForeignTableError(TableError):
    """A measured table that does not describe this host; the message names the rebuild."""


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model, for a table's metadata."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def host_info(device: torch.device, threads: int | None) -> dict[str, object]:
    """Machine and software a measurement depends on (JSON types)."""
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def pick_probe(times: dict[str, float], count: int = PROBE_SIGNATURES) -> dict[str, float]:
    """``count`` keys spread over the range of ``times`` (raw ms), with their times."""
    ranked = sorted(times, key=times.get)
    if len(ranked) <= count:
        return {k: times[k] for k in ranked}
    picks = {ranked[round((i + 0.5) * len(ranked) / count)] for i in range(count)}
    return {k: times[k] for k in sorted(picks)}


def cache_path(space: SearchSpace, target: str, threads: int | None, root: Path = CACHE_DIR
               ) -> Path:
    """Where this host's rebuilt table for ``space`` lives (under ``runs/``)."""
    return root / f"{space.name}_{target.replace(':', '')}_{threads or 1}t.json"


def rebuild_command(table: CostTable, space_file: str | None, out: str | Path) -> str:
    """The exact `hwnas costs build` call that measures ``table`` again on this host."""
    m = table.meta
    parts = ["hwnas costs build", f"--space {space_file or m.space_file or '<space.yaml>'}",
             f"--target {m.target}", f"--batch {m.batch}"]
    if m.threads:
        parts.append(f"--threads {m.threads}")
    if m.clock:
        parts.append(f"--clock {m.clock}")
    if m.burst != 1:
        parts.append(f"--burst {m.burst}")
    return " ".join([*parts, f"--out {out}"])


@dataclass
class HostCheck:
    """The verdict on one table for this host: ``foreign`` with a one-line ``reason``."""

    foreign: bool
    reason: str
    ratio: float | None = None  # median of probe time here / recorded time

    def message(self, table: CostTable, command: str, out: str | Path,
                table_option: str | None = None, own_table: bool = False) -> str:
        """One line: why, then the fix. With ``table_option`` (the command's table option) it
        also says how to use the rebuilt table, or, with ``own_table``, that this host's own
        table at ``out`` is already there."""
        use = f"`{table_option} {out}`"
        if own_table and table_option:
            fix = f"this host's own table is {out} (built earlier): pass {use}"
        else:
            fix = f"rebuild it with `{command}`" + (f", then pass {use}" if table_option else "")
        return (f"cost table {table.id} does not describe this host ({self.reason}); {fix}, "
                f"or pass --allow-foreign-table to use it anyway")


def time_probe(target_name: str, threads: int, clock: str, keys: Sequence[str], act: str,
               warmup: int = PROBE_WARMUP, repeats: int = PROBE_REPEATS, seed: int = 0
               ) -> dict[str, float]:
    """Median ms of each probe signature, timed interleaved among themselves only.

    A table's build records its probe with this same function right after timing its layers,
    so a later probe compares like with like (few layers in a loop stay hot in cache and run
    faster than among a whole table's)."""
    from costmodels.targets import Target

    target = Target(target_name, threads)
    keys = sorted(keys)
    calls = [target.layer(OpSignature.parse(k), act, seed) for k in keys]
    with target.running():
        timed = time_interleaved(calls, target.device, warmup, repeats, seed, clock=clock)
    return {k: t for k, (t, _) in zip(keys, timed, strict=True)}


def probe_times(table: CostTable, space: SearchSpace) -> dict[str, float]:
    """Re-time the table's probe signatures here with its target, threads and clock (ms)."""
    m = table.meta
    return time_probe(m.target, m.threads or 1, m.clock or "wall", list(m.probe), space.act)


def check_host(table: CostTable, space: SearchSpace,
               measure: Callable[[CostTable, SearchSpace], dict[str, float]] | None = None
               ) -> HostCheck:
    """Whether ``table`` describes this host: same CPU / GPU, and the probe within ±10%.

    Tables that are not measurements (analytic, imported) are not about any host: never
    foreign. ``measure`` re-times the probe signatures: `probe_times` unless given, looked up
    when called (so a test can stub it for every caller).
    """
    m = table.meta
    if m.method != "measured":
        return HostCheck(False, f"{m.method or 'unmeasured'} table: not tied to a host")
    if not m.host or not m.probe:
        return HostCheck(True, "it records no provenance: built by an older hwnas")
    here = host_info(torch.device(m.target if m.target.startswith("cuda") else "cpu"),
                     m.threads)
    for key in ("cpu", "gpu"):
        if m.host.get(key) != here[key]:
            return HostCheck(True, f"measured on {key} {m.host.get(key)!r}, this host has "
                                   f"{here[key]!r}")
    times = (measure or probe_times)(table, space)
    ratios = [times[k] / m.probe[k] for k in m.probe if m.probe[k] > 0]
    ratio = statistics.median(ratios) if ratios else float("nan")
    if not abs(ratio - 1.0) <= DRIFT:
        return HostCheck(True, f"its {len(ratios)} reference layers run {ratio:.2f}x their "
                               f"recorded time here, beyond ±{DRIFT:.0%}", ratio)
    return HostCheck(False, f"same {m.host.get('gpu') or m.host.get('cpu')}, reference layers "
                            f"at {ratio:.2f}x their recorded time", ratio)


def require_host(table: CostTable, space: SearchSpace, space_file: str | None,
                 allow_foreign: bool = False,
                 measure: Callable[[CostTable, SearchSpace], dict[str, float]] | None = None,
                 table_option: str | None = None) -> HostCheck:
    """`check_host`, raising `ForeignTableError` (one line, with the rebuild command) when the
    table is foreign and ``allow_foreign`` is off. ``table_option`` is the calling command's
    table option: the line then says how to pass the rebuilt table, or that this host's own
    table is already in ``runs/tables/`` (the quick start builds it there). ``measure``:
    `probe_times` unless given."""
    verdict = check_host(table, space, measure)
    if verdict.foreign and not allow_foreign:
        out = cache_path(space, table.meta.target, table.meta.threads)
        own = table_option is not None and _describes_host(out, table, space, measure)
        raise ForeignTableError(verdict.message(table, rebuild_command(table, space_file, out),
                                                out, table_option, own))
    return verdict


def _describes_host(path: Path, other: CostTable, space: SearchSpace,
                    measure: Callable[[CostTable, SearchSpace], dict[str, float]] | None) -> bool:
    """Whether ``path`` holds a table for ``space`` other than ``other`` that describes this
    host."""
    if not path.is_file():
        return False
    try:
        table = CostTable.load(path)
        table.check_covers(space)
    except TableError:
        return False
    return table.id != other.id and not check_host(table, space, measure).foreign
