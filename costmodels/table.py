"""`CostTable`: op signature → metrics, with the metadata that says where the numbers came from.

Metrics are floats in the units their names say: ``latency_ms`` (milliseconds), ``energy_mj``
(millijoules), ``weight_bytes`` / ``peak_activation_bytes`` (bytes), ``macs`` and ``bitops``
(counts). A network's cost is the sum of its layers' costs, except ``peak_activation_bytes``,
which is the max over layers (see `reduction`), plus the table's per-network ``overhead`` (graph
launch, input and output), measured as its own entry. A signature the table lacks is an error
that names it and the command that builds a table covering the space — never a silent zero.
A measured table records where and how it was measured (`TableMeta.host`, ``protocol``, and the
raw times of a few ``probe`` signatures), so a host can check that the table describes it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from costmodels.priced import Signature, is_block_key, parse_key, required_signatures
from costmodels.signature import (
    SIGNATURE_FIELDS,
    OpSignature,
    space_fingerprint,
)
from supernet.io import write_atomic
from supernet.space import SearchSpace

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no provenance, no overhead
MAX_METRICS = frozenset({"peak_activation_bytes"})


def reduction(metric: str) -> str:
    """How layer costs combine into a network's: ``"max"`` for peak memory, else ``"sum"``."""
    return "max" if metric in MAX_METRICS else "sum"


class TableError(ValueError):
    """A table that cannot be used as asked (wrong format, space or metric); names the fix."""


class MissingSignatureError(LookupError):
    """The table has no entry for a signature the architecture needs (``others``: more
    signatures it also lacks, counted and the first few named)."""

    def __init__(self, signature: OpSignature, table: CostTable,
                 others: list[OpSignature] | None = None):
        self.signature = signature
        meta = table.meta
        space_file = meta.space_file or f"configs/spaces/{meta.space or '<space>'}.yaml"
        more = ""
        if others:
            shown = ", ".join(s.key for s in others[:4])
            more = (f" and {len(others)} more signature(s) the space runs ({shown}"
                    f"{', …' if len(others) > 4 else ''})")
        super().__init__(
            f"cost table {table.id} (target {meta.target!r}, space {meta.space!r}) has no entry "
            f"for signature {signature.key} ({signature.describe()}){more}. "
            f"{_cover_advice(meta, space_file, signature.batch)}"
        )


def _cover_advice(meta: TableMeta, space_file: str, batch: int) -> str:
    """A command that gives a table covering the space: build it where hwnas can (this
    machine, an analytic preset), else import a CSV that has the missing rows."""
    if meta.target.split(":")[0] in ("cpu", "cuda", "onnxruntime") or meta.method == "analytic":
        return (f"Build a table that covers the space with `hwnas costs build --space "
                f"{space_file} --target {meta.target} --batch {batch} --out <table.json>`.")
    if "HW-NAS-Bench" in meta.method:
        return (f"Import a table that covers the space with `hwnas costs import --hw-nas-bench "
                f"<file.json> --device {meta.target} --metric latency --space {space_file} "
                "--out <table.json>` (it lists every missing entry and writes a template).")
    return (f"Import a table that covers the space with `hwnas costs import --csv <rows.csv> "
            f"--target {meta.target} --space {space_file} --out <table.json>` (it lists every "
            "missing row and writes a template CSV to fill in).")


@dataclass
class TableMeta:
    """Where a table's numbers came from; ``spread`` is the median relative IQR of latencies."""

    target: str
    device: str = ""
    method: str = ""  # "measured", "analytic", "imported from <file>"
    space: str | None = None
    space_fingerprint: str | None = None  # None: not tied to a space (e.g. an imported table)
    space_file: str | None = None
    torch_version: str = ""
    batch: int = 1
    threads: int | None = None
    warmup: int | None = None
    repeats: int | None = None
    clock: str | None = None  # "wall" or "thread" (CPU time of the timing thread); measured only
    burst: int = 1  # calls per timed call (the last one timed): 1 = cold, more = warm
    spread: float | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(
        timespec="seconds"))
    notes: str = ""
    format_version: int = FORMAT_VERSION
    # provenance of a measured table: the machine and software (see `costmodels.host`), how it
    # was timed, and the raw ms of a few reference signatures a host re-times to compare
    host: dict[str, Any] = field(default_factory=dict)
    protocol: str = ""
    probe: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableMeta:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TableError(f"table metadata has unknown field(s) {unknown}; known: "
                             f"{sorted(known)}")
        if "target" not in data:
            raise TableError("table metadata lacks 'target' (e.g. 'cpu', 'cuda', 'edgetpu')")
        return cls(**data)

    def for_space(self, space: SearchSpace, space_file: str | None = None) -> TableMeta:
        return replace(self, space=space.name, space_fingerprint=space_fingerprint(space),
                       space_file=space_file or self.space_file)


class CostTable:
    """Signature key → {metric: value}; look costs up, check coverage, save and load."""

    def __init__(self, entries: Mapping[str, Mapping[str, float]], meta: TableMeta,
                 overhead: Mapping[str, float] | None = None,
                 correction: Mapping[str, Mapping[str, float]] | None = None):
        if meta.format_version not in READABLE_VERSIONS:
            raise TableError(f"table format_version {meta.format_version} is not supported "
                             f"(this hwnas reads versions {list(READABLE_VERSIONS)}); rebuild "
                             "it with `hwnas costs build`")
        self.meta = meta
        # per network, not per layer: graph launch, input and output (same units as entries)
        self.overhead = {m: float(v) for m, v in (overhead or {}).items()}
        # metric -> {"a", "b", "c"}: network = a · (Σ layers + overhead) + b · layers + c, a
        # correction fitted on measured members by `hwnas costs check --write-corrected`
        self.correction = {m: {k: float(c[k]) for k in ("a", "b", "c")}
                           for m, c in (correction or {}).items()}
        self.entries: dict[str, dict[str, float]] = {}
        for key, metrics in entries.items():
            parse_key(key)  # reject malformed keys early
            self.entries[key] = {m: float(v) for m, v in metrics.items()}

    # -- lookups ------------------------------------------------------------------------------
    @property
    def metrics(self) -> tuple[str, ...]:
        """Metrics present in every entry."""
        sets = [set(m) for m in self.entries.values()]
        return tuple(sorted(set.intersection(*sets))) if sets else ()

    def check_metric(self, metric: str) -> None:
        if metric not in self.metrics:
            raise TableError(f"metric {metric!r} is not in cost table {self.id} (target "
                             f"{self.meta.target!r}); available metrics: {list(self.metrics)}")

    def lookup(self, sig: OpSignature | str, metric: str) -> float:
        """The cost of one signature in ``metric``'s units."""
        key = sig if isinstance(sig, str) else sig.key
        entry = self.entries.get(key)
        if entry is None:
            raise MissingSignatureError(parse_key(key), self)
        if metric not in entry:
            self.check_metric(metric)
            raise TableError(f"entry {key} of cost table {self.id} lacks metric {metric!r}")
        return entry[metric]

    def network_cost(self, layer_sum, layers, metric: str):
        """A network's cost from the sum of its layers' costs and its layer count (floats or
        tensors): plus the overhead, then the fitted correction if the table has one."""
        total = layer_sum + self.network_overhead(metric)
        c = self.correction.get(metric) if reduction(metric) == "sum" else None
        return total if c is None else c["a"] * total + c["b"] * layers + c["c"]

    def network_overhead(self, metric: str) -> float:
        """What one network run costs beyond its layers in ``metric``'s units (0 if unmeasured)."""
        return 0.0 if reduction(metric) == "max" else self.overhead.get(metric, 0.0)

    @property
    def measured(self) -> bool:
        return self.meta.method == "measured"

    def __contains__(self, sig: OpSignature | str) -> bool:
        return (sig if isinstance(sig, str) else sig.key) in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def missing(self, space: SearchSpace) -> list[Signature]:
        """Signatures of ``space`` (at the table's batch) that the table lacks, sorted by key:
        each block position by its block entries or its layers (`costmodels.priced`)."""
        needed = required_signatures(space, self.entries, self.meta.batch)
        return [needed[k] for k in sorted(needed) if k not in self.entries]

    def check_covers(self, space: SearchSpace) -> None:
        """Raise unless this table was built for ``space`` and prices every layer it can run."""
        fp = self.meta.space_fingerprint
        if fp is not None and fp != space_fingerprint(space):
            raise TableError(
                f"cost table {self.id} was built for space {self.meta.space!r} (fingerprint "
                f"{fp}), not for space {space.name!r} (fingerprint {space_fingerprint(space)}). "
                + _cover_advice(self.meta, "<its yaml>", self.meta.batch))
        missing = self.missing(space)
        if missing:
            raise MissingSignatureError(missing[0], self, missing[1:])

    # -- identity and files -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (a checkpoint loaded with ``weights_only`` can carry it)."""
        out = {"meta": asdict(self.meta), "entries": {k: self.entries[k]
                                                     for k in sorted(self.entries)}}
        if self.overhead:
            out["overhead"] = dict(sorted(self.overhead.items()))
        if self.correction:
            out["correction"] = {m: dict(sorted(c.items()))
                                 for m, c in sorted(self.correction.items())}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "cost table") -> CostTable:
        """The table `to_dict` wrote; ``source`` names where it came from in errors."""
        if not isinstance(data, Mapping) or "meta" not in data or "entries" not in data:
            raise TableError(f"{source}: not a cost table (expected keys 'meta' and 'entries')")
        version = data["meta"].get("format_version")
        if version not in READABLE_VERSIONS:
            raise TableError(f"{source}: table format_version {version!r} is not supported "
                             f"(this hwnas reads versions {list(READABLE_VERSIONS)}); rebuild "
                             "it with `hwnas costs build`")
        return cls(data["entries"], TableMeta.from_dict(data["meta"]), data.get("overhead"),
                   data.get("correction"))

    @property
    def id(self) -> str:
        """A content hash: equal tables (entries and metadata) have equal ids."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (a temporary file, then a rename), so readers never see half."""
        text = json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"
        return write_atomic(path, lambda tmp: tmp.write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> CostTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cost table {str(path)!r} does not exist; build one with "
                                    "`hwnas costs build --space <space.yaml> --target cpu "
                                    f"--out {path}`")
        return cls.from_dict(json.loads(path.read_text()), str(path))

    # -- CSV ----------------------------------------------------------------------------------
    def to_csv(self, path: str | Path) -> Path:
        """Write the entries as CSV (the columns `costmodels.imports.read_csv` reads, ``activation`` included)."""
        path = Path(path)
        blocks = [k for k in self.entries if is_block_key(k)]
        if blocks:
            raise TableError(f"table {self.id} has {len(blocks)} block-level entries (e.g. "
                             f"{blocks[0]}), which have no CSV form; share its JSON instead")
        metrics = sorted({m for e in self.entries.values() for m in e})
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*SIGNATURE_FIELDS, *metrics])
            for key in sorted(self.entries):
                sig = OpSignature.parse(key).to_dict()
                sig["activation"] = int(sig["activation"])
                writer.writerow([*(sig[c] for c in SIGNATURE_FIELDS),
                                 *(repr(self.entries[key][m]) if m in self.entries[key] else ""
                                   for m in metrics)])
        return path
