"""Importing cost tables measured elsewhere, refusing anything that would price wrongly.

A CSV row is one layer signature and its metrics. Everything that could silently turn into a
wrong cost is an error with one line naming the row or column and the fix: a signature given
twice, a column that is neither a signature field nor a metric named with its unit, a kind the
cost model does not know, a unit that is not the one hwnas keeps the metric in, rows the space
never runs (unless dropped on purpose), and signatures the space runs that the table lacks (all
of them counted, a template CSV written to fill in).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from costmodels.priced import block_signatures, required_signatures
from costmodels.signature import KINDS, SIGNATURE_FIELDS, OpSignature, enumerate_signatures
from costmodels.table import CostTable, TableError, TableMeta
from supernet.space import SearchSpace

# metric → the one unit hwnas keeps it in (column name = metric); counts and ratios have none
METRIC_UNITS = {
    "latency_ms": "ms", "energy_mj": "mJ", "weight_bytes": "bytes",
    "peak_activation_bytes": "bytes", "macs": "count", "bitops": "count",
    "latency_spread": "ratio (relative IQR)",
}
# other units of a known quantity: factor to multiply the values by to get hwnas's unit
_CONVERSIONS = {
    "latency": ("latency_ms", {"s": 1e3, "sec": 1e3, "us": 1e-3, "ns": 1e-6}),
    "energy": ("energy_mj", {"j": 1e3, "uj": 1e-3, "nj": 1e-6, "pj": 1e-9, "ms": None}),
}
SHOWN = 5  # signatures named in a coverage error; the template lists them all


def check_metric_column(name: str) -> None:
    """Raise unless ``name`` is a metric hwnas knows, in the unit hwnas keeps it in."""
    if name in METRIC_UNITS:
        return
    quantity, _, unit = name.partition("_")
    if quantity in _CONVERSIONS:
        canonical, factors = _CONVERSIONS[quantity]
        factor = factors.get(unit.lower())
        how = (f"multiply its values by {factor:g} and name it {canonical}" if factor
               else f"give it in {METRIC_UNITS[canonical]} as {canonical}")
        raise TableError(f"column {name!r}: hwnas keeps {quantity} in "
                         f"{METRIC_UNITS[canonical]} (column {canonical}), not {unit or 'no unit'}; "
                         f"{how}")
    raise TableError(f"unknown column {name!r}: a cost CSV has the signature columns "
                     f"{list(SIGNATURE_FIELDS)} and metric columns named with their unit "
                     f"{sorted(METRIC_UNITS)}; remove or rename it")


def read_csv(path: str | Path, meta: TableMeta) -> CostTable:
    """Import a table measured elsewhere (e.g. by a hardware team), strictly.

    One row per layer signature. Columns: ``kind`` (conv, dwconv or linear),
    ``in_channels``, ``out_channels``, ``kernel`` (0 for linear), ``stride``, ``in_size``
    (input height = width, pixels), ``weight_bits``, ``act_bits`` (32 = float), ``batch``,
    optional ``activation`` (1/0: whether the space's activation follows the conv; when the
    column is absent, each row prices both), optional ``group`` (a grouped 1x1 conv's group
    count; 1 when absent), then one column per metric, named with its unit
    (``latency_ms``, ``energy_mj``, ``weight_bytes``…). Empty metric cells are left out.
    Duplicate signatures, unknown columns or kinds and wrong units are refused.
    """
    path = Path(path)
    required = [f for f in SIGNATURE_FIELDS if f not in ("activation", "group")]
    entries: dict[str, dict[str, float]] = {}
    first_line: dict[str, int] = {}
    batches: set[int] = set()
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = header
        lacking = [c for c in required if c not in header]
        if lacking:
            raise TableError(f"{path}: missing column(s) {lacking}; a cost CSV needs "
                             f"{required} (+ optional 'activation', 'group') and metric "
                             "columns")
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise TableError(f"{path}: column(s) {repeated} appear more than once; keep one")
        metric_cols = [c for c in header if c not in SIGNATURE_FIELDS]
        for c in metric_cols:
            check_metric_column(c)
        if not metric_cols:
            raise TableError(f"{path}: no metric columns (e.g. latency_ms) besides "
                             f"{list(SIGNATURE_FIELDS)}")
        for line, row in enumerate(reader, 2):
            where = f"{path}:{line}"
            if None in row:
                raise TableError(f"{where}: more cells than the header's {len(header)} columns")
            sig = _row_signature(row, required, where)
            batches.add(sig.batch)
            metrics = {m: _number(row[m], m, where) for m in metric_cols
                       if (row[m] or "").strip() != ""}
            if not metrics:
                raise TableError(f"{where}: no metric values; fill in {metric_cols} or drop "
                                 "the row")
            for s in _activation_variants(sig, row.get("activation"), where):
                if s.key in entries:
                    raise TableError(f"{where}: signature {s.key} ({s.describe()}) was already "
                                     f"given on line {first_line[s.key]}; keep one row per "
                                     "signature")
                entries[s.key], first_line[s.key] = metrics, line
    if len(batches) > 1:
        raise TableError(f"{path}: rows mix batch sizes {sorted(batches)}; a table describes "
                         "one batch size, import one CSV per batch")
    notes = f"{meta.notes} imported from {path.name}".strip()
    return CostTable(entries, replace(meta, notes=notes, method=meta.method or "imported",
                                      batch=batches.pop() if batches else meta.batch))


def _row_signature(row: dict, required: Sequence[str], where: str) -> OpSignature:
    kind = (row["kind"] or "").strip()
    if kind not in KINDS:
        raise TableError(f"{where}: kind {kind!r} is not a layer kind hwnas prices; use one of "
                         f"{list(KINDS)}")
    values = []
    for c in required[1:]:
        text = (row[c] or "").strip()
        try:
            values.append(int(text))
        except ValueError:
            raise TableError(f"{where}: column {c}: {text!r} is not an integer") from None
    group = (row.get("group") or "1").strip()
    if not group.isdigit():
        raise TableError(f"{where}: column group: {group!r} is not an integer")
    try:
        return OpSignature(kind, *values, activation=False, group=int(group))
    except ValueError as e:
        raise TableError(f"{where}: {e}") from None


def _number(text: str, column: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TableError(f"{where}: column {column}: {text!r} is not a number") from None


def _activation_variants(sig: OpSignature, flag: str | None, where: str
                         ) -> Iterable[OpSignature]:
    if sig.kind == "linear":
        return [sig]
    if flag is None or flag.strip() == "":
        return [replace(sig, activation=True), sig]
    if flag.strip().lower() not in {"0", "1", "true", "false"}:
        raise TableError(f"{where}: activation: expected 1/0 or true/false, got {flag!r}")
    return [replace(sig, activation=flag.strip().lower() in {"1", "true"})]


def fit_to_space(table: CostTable, space: SearchSpace, *, ignore_unused: bool = False,
                 template: str | Path | None = None, rerun: str = "",
                 write=None) -> CostTable:
    """``table`` restricted to what ``space`` runs, or a one-line error.

    Rows the space never runs are an error (a typo in a row looks exactly like that) unless
    ``ignore_unused``, which drops them. Signatures the space runs that the table lacks are an
    error naming how many and the first few; their rows are written to ``template`` (by
    ``write(signatures, path, metrics)``, default a CSV with empty metric cells to fill in) and
    ``rerun`` (a command) says how to import again.
    """
    batch = table.meta.batch
    needed = required_signatures(space, table.entries, batch)
    usable = {s.key for s in enumerate_signatures(space, batch)} | {
        s.key for s in block_signatures(space, batch)}
    unused = sorted(k for k in table.entries if k not in usable and k not in needed)
    if unused and not ignore_unused:
        raise TableError(f"{len(unused)} of the table's {len(table)} signatures are never run "
                         f"by space {space.name!r} (batch {table.meta.batch}): {_few(unused)}; "
                         "fix those rows, or pass --ignore-unused to drop them")
    missing = [needed[k] for k in sorted(needed) if k not in table.entries]
    if missing:
        wrote = ""
        if template is not None:
            (write or write_template)(missing, template, table.metrics or ("latency_ms",))
            wrote = (f"; wrote their rows to {template}: fill in the metric values, add them "
                     "to the table")
        again = f" and run `{rerun}` again" if rerun else ""
        raise TableError(f"the table lacks {len(missing)} of the {len(needed)} signatures space "
                         f"{space.name!r} runs: {_few([s.key for s in missing])}{wrote}{again}")
    kept = {k: v for k, v in table.entries.items() if k in usable}
    return CostTable(kept, table.meta, table.overhead, table.correction)


def write_template(signatures: Sequence[OpSignature], path: str | Path,
                   metrics: Sequence[str]) -> Path:
    """A CSV with one row per signature and empty ``metrics`` cells, ready to fill in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*SIGNATURE_FIELDS, *metrics])
        for sig in signatures:
            d = sig.to_dict()
            d["activation"] = int(d["activation"])
            writer.writerow([*(d[c] for c in SIGNATURE_FIELDS), *("" for _ in metrics)])
    return path


def _few(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")
