"""Figure 5 — cost fidelity and member switching.

Fidelity: `costmodels.check_fidelity` — the table's additive prediction (plus its per-network
overhead entry) against the measured end-to-end latency of sampled members (batch 1, one
thread, the table's clock, entries re-timed in the same rounds): MAPE, Kendall τ, share within
±10%, and the roofline, learned and linear-correction models judged on held-out members.

Switching: `FamilyRuntime.set_member` (a reference swap among pre-extracted members) against
loading one member from the export on disk (`deploy.load_member`), each timed many
times in alternation; also each followed by one batch-1 inference.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import load_space, load_table, options, write_result
from benchmarks.training import shared_search
from costmodels import check_fidelity
from costmodels.profile import torch_threads
from deploy import FamilyRuntime, load_member

NAME = "cost_fidelity"
# (test members, fit members, warm-up rounds, timed rounds)
FIDELITY = {True: (12, 12, 3, 10), False: (50, 50, 5, 30)}
SWITCHES = {True: (2000, 20), False: (20000, 100)}  # (set_member calls, loads from disk)


def switch_times(export_dir: Path, switches: int, loads: int) -> dict[str, Any]:
    """Median seconds of a member switch and of a load from disk, alone and with one
    batch-1 inference after it (one thread)."""
    runtime = FamilyRuntime.load(export_dir / "family.pt")
    names = runtime.names
    space = runtime.net.space
    x = torch.randn(1, space.input_channels, space.input_size, space.input_size)
    switch, switch_infer, load, load_infer = [], [], [], []
    with torch_threads(1), torch.inference_mode():
        for i in range(switches):
            t = time.perf_counter()
            runtime.set_member(names[i % len(names)])
            switch.append(time.perf_counter() - t)
        for i in range(loads):
            name = names[i % len(names)]
            t = time.perf_counter()
            runtime.set_member(name)
            runtime(x)
            switch_infer.append(time.perf_counter() - t)
            t = time.perf_counter()
            member = load_member(export_dir / "members" / name)
            load.append(time.perf_counter() - t)
            member(x)
            load_infer.append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in (("switch_s", switch), ("load_s", load),
                                                 ("switch_infer_s", switch_infer),
                                                 ("load_infer_s", load_infer))}
    return {**med, "load_over_switch": med["load_s"] / med["switch_s"],
            "load_infer_over_switch_infer": med["load_infer_s"] / med["switch_infer_s"],
            "switches": switches, "loads": loads, "members": names}


def run(quick: bool, out_dir: str | Path, **kwargs: Any) -> dict:
    opts = options(**kwargs)
    space, table = load_space(quick), load_table(quick, out_dir)
    n, n_fit, warmup, repeats = FIDELITY[quick]
    report = check_fidelity(space, table, n, "cpu", threads=1, seed=0, fit_samples=n_fit,
                            warmup=warmup, repeats=repeats, progress=opts.progress,
                            clock=table.meta.clock or "wall")
    report.save(out_dir, f"{NAME}_detail")
    shared = shared_search(quick, out_dir, opts)
    switching = switch_times(Path(shared["export_dir"]), *SWITCHES[quick])
    corrected = report.corrected
    headline = {
        "mape_pct": report.additive.mape, "kendall_tau": report.additive.kendall_tau,
        "within_10pct": report.additive.within_10pct,
        "corrected_mape_pct": corrected.mape if corrected else float("nan"),
        "corrected_within_10pct": corrected.within_10pct if corrected else float("nan"),
        "switch_us": 1e6 * switching["switch_s"], "load_ms": 1e3 * switching["load_s"],
        "load_over_switch": switching["load_over_switch"],
    }
    settings = {"test_members": n, "fit_members": n_fit, "warmup": warmup, "repeats": repeats,
                "clock": report.clock, "threads": 1, "batch": table.meta.batch,
                "table": table.id, "table_device": table.meta.device,
                "table_created": table.meta.created}
    results = {"additive": asdict(report.additive),
               "models": {name: asdict(a) for name, a in report.models.items()},
               "overhead_ms": report.overhead_ms,
               "corrected": asdict(corrected) if corrected else None,
               "correction": asdict(report.correction) if report.correction else None,
               "switching": switching, "detail": f"{NAME}_detail.json"}
    return write_result(out_dir, NAME, quick, opts, settings, results, headline)


BIT_LAYERS = ("conv_i16_o64_k1_s1_r28", "dwconv_i64_o64_k3_s2_r28", "conv_i64_o24_k1_s1_r14",
              "conv_i40_o240_k1_s1_r7", "dwconv_i240_o240_k5_s2_r7", "conv_i480_o80_k1_s1_r4",
              "conv_i112_o672_k1_s1_r4")


def bit_costs(table_file: str, rounds: int = 100) -> str:
    """Markdown: int8 vs float entries of a few layers of an onnxruntime table for the
    Fashion-MNIST space, and whole members at several bit-widths, predicted by the table and
    timed as ONNX here (one thread, thread clock, interleaved)."""
    from costmodels import CostTable, table_cost
    from costmodels.targets import Target
    from costmodels.timing import time_interleaved
    from supernet import ArchConfig, SearchSpace, SuperNet, extract
    from supernet.layers import describe_layers

    space = SearchSpace.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "spaces"
                                  / "fmnist.yaml")
    table = CostTable.load(table_file)
    lines = ["| layer | int8 (µs) | float (µs) | int8 / float |", "| --- | --- | --- | --- |"]
    for prefix in BIT_LAYERS:
        for key in (k for k in sorted(table.entries) if k.startswith(prefix + "_w8_a8_")):
            i8 = table.entries[key]["latency_ms"]
            f32 = table.entries[key.replace("_w8_a8_", "_w32_a32_")]["latency_ms"]
            ratio = f"{i8 / f32:.2f}" if f32 > 0 else "—"
            lines.append(f"| `{key}` | {1e3 * i8:.1f} | {1e3 * f32:.1f} | {ratio} |")

    def at(arch: ArchConfig, w: int, a: int) -> ArchConfig:
        return ArchConfig.from_dict({k: w if k.endswith("wbits") else a if k.endswith("abits")
                                     else v for k, v in arch.to_dict().items()})

    net, target = SuperNet(space).eval(), Target("onnxruntime", 1)
    shape = (1, space.input_channels, space.input_size, space.input_size)
    rows, calls = [], []
    for name, base in (("largest", space.largest()), ("smallest", space.smallest())):
        for w, a in ((32, 32), (8, 8), (4, 4), (8, 32)):
            arch = at(base, w, a)
            rows.append((name, w, a, table_cost(space, table, arch)))
            calls.append(target.network(extract(net, arch), describe_layers(space, arch), shape))
    with target.running():
        timed = time_interleaved(calls, target.device, 5, rounds, 0, clock="thread")
    lines += ["", "| member | weight / act bits | table (ms) | measured ONNX (ms) |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {w} / {a} | {pred:.3f} | {ms:.3f} (IQR {100 * spread:.0f} %) |"
              for (name, w, a, pred), (ms, spread) in zip(rows, timed, strict=True)]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["bits"]:  # python -m benchmarks.cost_fidelity bits TABLE.json
        print(bit_costs(sys.argv[2]))
        raise SystemExit(0)
    from benchmarks.common import main

    raise SystemExit(main(NAME, run))
