"""Figure 3 — against hand-made baselines at equal measured CPU latency.

- the family: the exported members (one search, no retraining, BN recalibrated);
- a uniform width-multiplier family: the largest config with every stage's width at its i-th
  choice (the last choice where a stage has fewer), each trained from scratch;
- timm MobileNetV3 models with one input channel, their stem stride set to 1 for 28×28 inputs
  (as the space's stem), trained from scratch.
Every network is trained with the search's weight recipe for the same epochs and batches, and
all are timed together (batch 1, one thread, interleaved rounds, the table's clock). A
baseline's "family accuracy at its latency" is the best member at or under its latency.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch

from benchmarks.common import (
    datamodule,
    load_space,
    load_table,
    mode,
    options,
    pyplot,
    save_axes,
    write_result,
)
from benchmarks.training import (
    ListOutput,
    accuracy_on_test,
    load_twin,
    shared_search,
    store_trained,
    train_from_scratch,
    twin_path,
)
from costmodels import measure_networks, table_cost
from deploy import FamilyRuntime
from supernet import ArchConfig, SearchSpace

NAME = "baselines"
TIMM_MODELS = {True: ("mobilenetv3_small_050",),
               False: ("mobilenetv3_small_050", "mobilenetv3_small_100")}
LATENCY = {True: (3, 10), False: (10, 50)}  # (warm-up, timed) interleaved rounds


def width_multiplier_configs(space: SearchSpace) -> list[ArchConfig]:
    """The largest config with every width at its i-th choice, i = 0 … most choices − 1."""
    largest = space.largest()
    widths = [d for d in space.decisions if d.kind == "width"]
    steps = max(len(d.choices) for d in widths)
    return [ArchConfig.from_dict({**largest.to_dict(),
                                  **{d.key: d.choices[min(i, len(d.choices) - 1)]
                                     for d in widths}})
            for i in range(steps)]


def timm_baseline(name: str, space: SearchSpace):
    """A timm model for the space's images: its channels and classes, stem stride 1."""
    model = timm.create_model(name, num_classes=space.num_classes,
                              in_chans=space.input_channels, pretrained=False)
    model.conv_stem.stride = (1, 1)
    return ListOutput(model)


def timm_twin(quick: bool, out_dir: str | Path, opts, name: str,
              recipe: dict[str, Any]) -> tuple[dict[str, Any], torch.nn.Module]:
    """A timm baseline trained from scratch with ``recipe`` and scored, and the trained network
    (cached in ``<out_dir>/shared/scratch`` by name and recipe, as the twins)."""
    m, space = mode(quick), load_space(quick)
    path = twin_path(quick, out_dir, name, recipe)
    model = timm_baseline(name, space)
    if path.is_file():
        model.load_state_dict(torch.load(path.with_suffix(".pt"), weights_only=True))
        return json.loads(path.read_text()), model.eval()
    dm = datamodule(quick, opts.data_dir)
    timing = train_from_scratch(model, dm, recipe, epochs=m.epochs, limit=m.limit,
                                device=opts.device)
    result = {"train_timing": timing, "params": sum(p.numel() for p in model.parameters()),
              "accuracy": accuracy_on_test(model, dm, space.num_classes)[-1]}
    store_trained(path, result, model)
    return result, model.eval()


def best_at(latency: float, family: list[dict]) -> dict | None:
    fits = [r for r in family if r["measured_latency_ms"] <= latency]
    return max(fits, key=lambda r: r["accuracy"]) if fits else None


def run(quick: bool, out_dir: str | Path, **kwargs: Any) -> dict:
    opts = options(**kwargs)
    m = mode(quick)
    shared = shared_search(quick, out_dir, opts)
    space, table = load_space(quick), load_table(quick, out_dir)
    runtime = FamilyRuntime.load(Path(shared["export_dir"]) / "family.pt")
    accuracy = {r["name"]: r["accuracy"][-1] for r in shared["records"]}
    entries, modules = [], []
    for name in runtime.names:
        entries.append({"name": name, "kind": "family", "accuracy": accuracy[name],
                        "latency_ms": runtime.infos[name].costs["latency_ms"]})
        modules.append(runtime.member_modules[name])
    for i, config in enumerate(width_multiplier_configs(space)):
        twin, static = load_twin(quick, out_dir, opts, config, shared["recipe"])
        entries.append({"name": f"width{i}", "kind": "width_multiplier",
                        "config": config.to_dict(),
                        "accuracy": twin["accuracy"][-1], "train_timing": twin["timing"],
                        "latency_ms": table_cost(space, table, config, "latency_ms")})
        modules.append(static)
    for name in TIMM_MODELS[quick]:
        result, model = timm_twin(quick, out_dir, opts, name, shared["recipe"])
        entries.append({"name": name, "kind": "timm", **result})
        modules.append(model)
    warmup, repeats = LATENCY[quick]
    clock = table.meta.clock or "wall"
    shape = (1, space.input_channels, space.input_size, space.input_size)
    times = measure_networks(modules, shape, "cpu", threads=1, warmup=warmup, repeats=repeats,
                             clock=clock)
    for e, (ms, spread) in zip(entries, times, strict=True):
        e["measured_latency_ms"], e["latency_spread"] = ms, spread
    family = [e for e in entries if e["kind"] == "family"]
    comparisons = []
    for e in entries:
        if e["kind"] == "family":
            continue
        best = best_at(e["measured_latency_ms"], family)
        comparisons.append({
            "baseline": e["name"], "kind": e["kind"], "latency_ms": e["measured_latency_ms"],
            "baseline_accuracy": e["accuracy"],
            "family_member": best["name"] if best else None,
            "family_accuracy": best["accuracy"] if best else None,
            "family_member_latency_ms": best["measured_latency_ms"] if best else None,
            "family_minus_baseline_pp": 100 * (best["accuracy"] - e["accuracy"]) if best
            else None,
        })
    matched = [c["family_minus_baseline_pp"] for c in comparisons
               if c["family_minus_baseline_pp"] is not None]
    headline = {
        "baselines": float(len(comparisons)), "baselines_matched": float(len(matched)),
        "mean_family_minus_baseline_pp": sum(matched) / len(matched) if matched else float("nan"),
        "min_family_minus_baseline_pp": min(matched) if matched else float("nan"),
    }
    settings = {"epochs": m.epochs, "limit_train_batches": m.limit, "batch_size": m.batch_size,
                "recipe": shared["recipe"], "timm_models": list(TIMM_MODELS[quick]),
                "timm_adaptation": "in_chans=space channels, conv_stem stride 1",
                "latency": {"batch": 1, "threads": 1, "clock": clock, "warmup": warmup,
                            "repeats": repeats, "interleaved": True}}
    results = {"networks": entries, "comparisons": comparisons}
    plot(entries, Path(out_dir) / f"{NAME}.png")
    return write_result(out_dir, NAME, quick, opts, settings, results, headline)


def plot(entries: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    style = {"family": ("o-", "nested family (one search)"),
             "width_multiplier": ("s--", "width multiplier, from scratch"),
             "timm": ("^", "timm MobileNetV3, from scratch")}
    for kind, (marker, label) in style.items():
        group = sorted((e for e in entries if e["kind"] == kind),
                       key=lambda e: e["measured_latency_ms"])
        ax.plot([e["measured_latency_ms"] for e in group],
                [100 * e["accuracy"] for e in group], marker, label=label)
        for e in group:
            ax.annotate(e["name"].replace("mobilenetv3_", "mnv3_"),
                        (e["measured_latency_ms"], 100 * e["accuracy"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("measured CPU latency (ms, batch 1, 1 thread)")
    ax.set_ylabel("test accuracy (%)")
    save_axes(fig, ax, path)


if __name__ == "__main__":
    from benchmarks.common import main

    raise SystemExit(main(NAME, run))
