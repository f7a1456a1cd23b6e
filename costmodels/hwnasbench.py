"""Import per-block device tables in the HW-NAS-Bench format (FBNet space).

The file is JSON: ``{"units": {"latency": "ms", "energy": "mJ"}, "<device>": {"<metric>":
{"<key>": value}}}`` (other top-level keys starting with ``_`` are notes). Keys, with H = W the
input size in pixels and every layer in float:

- ``ConvBlock_H_W_Cin_Cout_exp_kernel_stride_group``: a whole inverted-residual block (1x1
  expand, k×k depthwise with the stride, 1x1 project; residual when Cin == Cout and stride 1;
  group > 1: both 1x1 convs grouped, a channel shuffle between them);
- ``Skip_H_W_Cin_Cout_stride``: a skip choice (the identity when Cin == Cout and stride 1, else
  a 1x1 conv with the stride);
- ``ConvNorm_H_W_Cin_Cout_kernel_stride``: conv → BN → activation (the stem and the head conv);
- ``AvgP_H_W_C`` and ``FC_Cin_Cout``: global pooling and the classifier, summed into hwnas's
  one ``linear`` entry.

A network's figure is the sum of its entries. Rows the space never runs are refused unless
``--ignore-unused`` drops them. Duplicate keys, unknown key forms, devices, metrics and units
are one-line errors; missing entries are counted and written as a template to fill in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from costmodels.imports import fit_to_space
from costmodels.priced import BlockSignature, Signature
from costmodels.signature import OpSignature
from costmodels.table import CostTable, TableError, TableMeta
from supernet.space import SearchSpace

# metric → (hwnas column, hwnas unit, {unit spelled in a file: factor to hwnas's unit})
METRICS = {
    "latency": ("latency_ms", "ms", {"ms": 1.0, "us": 1e-3, "s": 1e3}),
    "energy": ("energy_mj", "mJ", {"mj": 1.0, "uj": 1e-3, "j": 1e3}),
}
_FORMS = {
    "ConvBlock": 8, "Skip": 5, "ConvNorm": 6, "AvgP": 3, "FC": 2,
}
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


def load_entries(path: str | Path, device: str, metric: str, unit: str | None = None
                 ) -> tuple[dict[str, float], str, float]:
    """``(key → value in hwnas's unit, the file's unit, factor applied)`` for one device and
    metric of an HW-NAS-Bench-format JSON file."""
    path = Path(path)
    if metric not in METRICS:
        raise TableError(f"--metric {metric!r}: HW-NAS-Bench tables give {sorted(METRICS)}")
    try:
        data = json.loads(path.read_text(), object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise TableError(f"{path}: not JSON ({e}); an HW-NAS-Bench-format table is "
                         '{"units": {...}, "<device>": {"<metric>": {"<key>": value}}}') from None
    if not isinstance(data, dict):
        raise TableError(f"{path}: expected a JSON object of devices")
    devices = sorted(k for k in data if k != "units" and not k.startswith("_"))
    if device not in devices:
        raise TableError(f"--device {device!r} is not in {path}; it has {devices}")
    if metric not in data[device]:
        raise TableError(f"--metric {metric!r}: device {device!r} in {path} has "
                         f"{sorted(data[device])}")
    stated = (data.get("units") or {}).get(metric)
    if stated and unit and stated.lower() != unit.lower():
        raise TableError(f"--unit {unit!r} contradicts the file's stated {metric} unit "
                         f"{stated!r}; drop --unit or fix the file")
    unit = stated or unit
    column, canonical, factors = METRICS[metric]
    if not unit:
        raise TableError(f"{path} states no unit for {metric}; pass --unit (one of "
                         f"{sorted(factors)}), as the table's source documents it")
    factor = factors.get(unit.lower())
    if factor is None:
        raise TableError(f"unit {unit!r} is not a unit of {metric}; use one of {sorted(factors)}")
    values = {}
    for key, v in data[device][metric].items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise TableError(f"{path}: {device}.{metric}.{key}: {v!r} is not a non-negative "
                             "number")
        values[key] = float(v) * factor
    return values, unit, factor


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise TableError(f"key {k!r} appears twice in one object; keep one entry per key")
        seen[k] = v
    return seen


def parse_hw_key(key: str) -> tuple[str, tuple]:
    """``(form, numbers)`` of one key; an unknown form or a non-square input is an error."""
    form, _, rest = key.partition("_")
    parts = rest.split("_") if rest else []
    if form not in _FORMS or len(parts) != _FORMS[form] or not all(
            _NUMBER.match(p) for p in parts):
        raise TableError(f"key {key!r} is not an HW-NAS-Bench block key; keys are "
                         "ConvBlock_H_W_Cin_Cout_exp_kernel_stride_group, "
                         "Skip_H_W_Cin_Cout_stride, ConvNorm_H_W_Cin_Cout_kernel_stride, "
                         "AvgP_H_W_C or FC_Cin_Cout")
    nums = tuple(float(p) if "." in p else int(p) for p in parts)
    if form != "FC" and nums[0] != nums[1]:
        raise TableError(f"key {key!r}: input {nums[0]}x{nums[1]} is not square; hwnas "
                         "spaces take square inputs")
    return form, nums


def to_signatures(values: dict[str, float], column: str
                  ) -> tuple[dict[str, dict[str, float]], list[str]]:
    """hwnas entries (signature key → {column: value}) and the keys no hwnas space can run."""
    entries: dict[str, dict[str, float]] = {}
    source: dict[str, str] = {}
    unrunnable, pools, fcs = [], {}, {}

    def put(sig: Signature, value: float, key: str) -> None:
        if sig.key in entries:
            raise TableError(f"keys {source[sig.key]!r} and {key!r} describe the same "
                             f"{sig.describe()}; keep one")
        entries[sig.key], source[sig.key] = {column: value}, key

    for key, value in values.items():
        form, n = parse_hw_key(key)
        if form == "ConvBlock":
            h, _, cin, cout, exp, k, s, g = n
            put(BlockSignature("block", cin, cout, exp, k, s, h,
                               residual=cin == cout and s == 1, groups=g), value, key)
        elif form == "Skip":
            h, _, cin, cout, s = n
            put(BlockSignature("skip", cin, cout, 0, 0, s, h), value, key)
        elif form == "ConvNorm":
            h, _, cin, cout, k, s = n
            put(OpSignature("conv", cin, cout, k, s, h), value, key)
        elif form == "AvgP":
            pools.setdefault(n[2], []).append((n[0], key, value))
        else:
            fcs.setdefault(n[0], []).append((n[1], key, value))
    for c, heads in fcs.items():  # pooling + classifier = hwnas's linear entry
        if c not in pools:
            unrunnable += [key for _, key, _ in heads]
        for out, fc_key, fc in heads:
            for h, pool_key, pool in pools.get(c, []):
                put(OpSignature("linear", c, out, 0, 1, h, activation=False), pool + fc,
                    f"{pool_key} + {fc_key}")
    unrunnable += [key for c, ps in pools.items() if c not in fcs for _, key, _ in ps]
    return entries, sorted(unrunnable)


def hw_keys(sig: Signature) -> list[str]:
    """The HW-NAS-Bench key(s) of a signature (float layers only), for a template to fill."""
    r = sig.in_size
    if isinstance(sig, BlockSignature):
        if sig.kind == "skip":
            return [f"Skip_{r}_{r}_{sig.in_channels}_{sig.out_channels}_{sig.stride}"]
        return [f"ConvBlock_{r}_{r}_{sig.in_channels}_{sig.out_channels}_{sig.expand:g}_"
                f"{sig.kernel}_{sig.stride}_{sig.groups}"]
    if sig.kind == "linear":
        return [f"AvgP_{r}_{r}_{sig.in_channels}", f"FC_{sig.in_channels}_{sig.out_channels}"]
    return [f"ConvNorm_{r}_{r}_{sig.in_channels}_{sig.out_channels}_{sig.kernel}_{sig.stride}"]


def import_hw_nas_bench(path: str | Path, device: str, metric: str, space: SearchSpace, *,
                        space_file: str, unit: str | None = None, ignore_unused: bool = False,
                        template: str | Path | None = None, rerun: str = "") -> CostTable:
    """A cost table for ``space`` from one device and metric of an HW-NAS-Bench-format file."""
    values, unit, factor = load_entries(path, device, metric, unit)
    column, canonical, _ = METRICS[metric]
    entries, unrunnable = to_signatures(values, column)
    if unrunnable and not ignore_unused:
        raise TableError(f"{len(unrunnable)} of {len(values)} entries describe layers no hwnas "
                         f"space runs (a pooling without a classifier or the reverse): "
                         f"{', '.join(unrunnable[:4])}{' …' if len(unrunnable) > 4 else ''}; "
                         "pass --ignore-unused to drop them")
    note = (f"{metric} of device {device!r} in {unit}" + (f", × {factor:g} to {canonical}"
                                                         if factor != 1 else ""))
    if unrunnable:
        note += f"; {len(unrunnable)} entries no hwnas space runs dropped (--ignore-unused)"
    meta = TableMeta(target=device, device=f"{device} (HW-NAS-Bench-format table)",
                     method=f"imported from {Path(path).name} (HW-NAS-Bench format)",
                     notes=note)
    table = fit_to_space(CostTable(entries, meta), space, ignore_unused=ignore_unused,
                         template=template, rerun=rerun,
                         write=lambda sigs, p, _m: _write_template(sigs, p, device, metric))
    return CostTable(table.entries, table.meta.for_space(space, space_file))


def _write_template(signatures: Sequence[Signature], path: str | Path, device: str,
                    metric: str) -> Path:
    keys = sorted({k for s in signatures for k in hw_keys(s)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({device: {metric: dict.fromkeys(keys)}}, indent=1) + "\n")
    return path
