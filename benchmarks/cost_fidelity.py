"""Figure 5 — cost fidelity and member switching.

Fidelity: `costmodels.check_fidelity` — the table's additive prediction against the measured
end-to-end latency of sampled members (batch 1, one thread, the table's clock): MAPE, Kendall τ,
share within ±10%, and the linear correction judged on held-out members.

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
               "corrected": asdict(corrected) if corrected else None,
               "correction": asdict(report.correction) if report.correction else None,
               "switching": switching, "detail": f"{NAME}_detail.json"}
    return write_result(out_dir, NAME, quick, opts, settings, results, headline)


if __name__ == "__main__":
    from benchmarks.common import main

    raise SystemExit(main(NAME, run))
