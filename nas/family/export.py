"""Export a trained search as a nested family: one shared checkpoint, standalone members, ONNX,
the Pareto front — written into a temporary directory and renamed into place at the end.

Layout of ``out``::

    family.pt                      shared weights, member configs, per-member BN statistics,
                                   costs, α, space spec and table id (`deploy.write_family`)
    members/<name>/model.pt        the extracted member's state_dict
    members/<name>/model.onnx      the member as an integer ONNX QDQ model (`deploy.lower_member`)
    members/<name>/config.json     config, space, costs, accuracy, latency, per-layer bits and
                                   bytes, the ONNX check (`deploy.write_member`)
    pareto.json, pareto.png        accuracy vs cost of every member (and sampled configs)

The search side (family, evaluation, Pareto front) lives here; what ships is `deploy`'s.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from costmodels import CostTable
from deploy import FamilyFile, MemberRecord, trained_weight_quant, write_family, write_member
from nas.family.chain import Family, family_from_search, parse_budgets
from nas.family.finetune import dearest, finetune_members
from nas.family.pareto import MEASURED, budget_summary, format_table, plot_pareto, write_pareto_json
from nas.family.recalibrate import MemberEvaluation, evaluate_member
from supernet import ArchConfig
from supernet.io import atomic_dir


@dataclass
class ExportResult:
    out: Path
    family: Family
    records: list[dict[str, Any]]
    logged_artifact: bool = False
    finetuned: list[str] = field(default_factory=list)  # members shipping their own weights
    finetune_cpu_s: float = 0.0  # the CPU seconds their fine-tune took, all together


def log_artifact(out: Path, name: str, metadata: Mapping[str, Any]) -> bool:
    """Log ``out`` as a W&B model artifact when a wandb run is active (never starts one)."""
    wandb = sys.modules.get("wandb")  # no run can be active if wandb was never imported
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    artifact = wandb.Artifact(name, type="model", metadata=dict(metadata))
    artifact.add_dir(str(out))
    wandb.run.log_artifact(artifact)
    return True


def _record(name: str, kind: str, ev: MemberEvaluation, costs: Mapping[str, float]) -> dict:
    return {"name": name, "kind": kind, "config": ev.config.to_dict(), "costs": dict(costs),
            "accuracy": ev.accuracy, MEASURED: ev.measured_latency_ms,
            "latency_spread": ev.latency_spread}


def export_family(search, out: str | Path, datamodule, *, table: CostTable | None = None,
                  members: int = 8, budgets: Mapping[str, Sequence[float]] | None = None,
                  metric: str = "latency_ms", start: str = "largest",
                  configs: Sequence[ArchConfig | Mapping] | None = None, recal_batches: int = 20,
                  classifier_batches: int = 100, test_batches: int | None = None,
                  samples: int = 0,
                  latency_device: str | None = "cpu", latency_repeats: int = 30,
                  onnx: bool = True, onnx_fallback: str | None = None, progress: bool = True,
                  seed: int = 0, finetune: Sequence[str] = (), finetune_steps: int = 1000,
                  finetune_lr: float = 0.02) -> ExportResult:
    """Build the family of a trained `SupernetSearch`, evaluate every member and write ``out``.
    The members named in ``finetune`` ship their own weights instead of the shared ones:
    ``finetune_steps`` batches distilled from the dearest member (`finetune_members`)."""
    table = table if table is not None else search.table  # the checkpoint's own
    family = family_from_search(search, table, metric=metric, members=members, budgets=budgets,
                                start=start, configs=configs)
    top = dearest(family.members, family.metric)
    names = [m.name for m in family.members]
    unknown = [n for n in finetune if n not in names]
    if unknown:
        raise ValueError(f"--finetune: {', '.join(unknown)} not in the family; its members are "
                         f"{', '.join(names)}")
    if top.name in finetune:
        raise ValueError(f"--finetune: {top.name} is the dearest member, the teacher of the "
                         f"others; name only cheaper members")
    if finetune and finetune_steps < 1:
        raise ValueError(f"--finetune-steps: must be at least 1, got {finetune_steps}")
    space, net = search.search_space, search.net.cpu().eval()
    datamodule.setup("fit")
    train, test = datamodule.weights_dataloader(), datamodule.test_dataloader()
    input_shape = (space.input_channels, space.input_size, space.input_size)
    kw = {"recal_batches": recal_batches, "classifier_batches": classifier_batches,
          "test_limit": test_batches,
          "latency_device": latency_device, "latency_repeats": latency_repeats}
    rng = random.Random(seed)
    extra = [space.sample(rng) for _ in range(samples)]
    bar = tqdm(total=len(family.members) + len(extra), desc="exporting family",
               disable=not progress)
    records, entries = [], []
    evaluated, own_weights, finetune_s = {}, {}, 0.0
    if finetune:  # the teacher first: the dearest member, recalibrated and refit
        evaluated[top.name] = evaluate_member(net, top.config, train, test, **kw)
        named = [m for m in family.members if m.name in finetune]
        start_s = time.process_time()
        copies = finetune_members(net, [m.config for m in named], evaluated[top.name].module,
                                  train, steps=finetune_steps, lr=finetune_lr,
                                  weight_decay=search.hparams.weight_decay, progress=progress)
        finetune_s = time.process_time() - start_s
        own_weights = {m.name: c for m, c in zip(named, copies, strict=True)}
    with atomic_dir(Path(out)) as tmp:
        for m in family.members:
            bar.set_postfix_str(m.name)
            tuned = m.name in own_weights
            weights = own_weights.get(m.name, net)
            ev = evaluated.get(m.name) or evaluate_member(weights, m.config, train, test,
                                                          own_weights=tuned, **kw)
            rec = _record(m.name, "tuned" if tuned else "member", ev, m.costs)
            rec.update(exit_costs=m.exit_costs, log_prob=m.log_prob, budgets=m.budgets)
            if tuned:
                rec["finetune_steps"] = finetune_steps
            costs = dict(m.costs)
            if ev.measured_latency_ms is not None:
                costs[MEASURED] = ev.measured_latency_ms
            meta = {**rec, "space": space.spec, "table_id": table.id,
                    "recal_batches": recal_batches, "classifier_batches": classifier_batches}
            doc = write_member(tmp / "members" / m.name, ev.module,
                               trained_weight_quant(weights, ev.module, m.config), meta,
                               input_shape, onnx=onnx, seed=seed, fallback=onnx_fallback)
            if onnx:
                rec["onnx"] = doc["onnx"]
                rec["onnx_max_abs_diff"] = doc["onnx"]["max_abs_diff"]
                rec["file_weight_bytes"] = doc["weight_bytes"]
            entries.append(MemberRecord(m.name, m.config, costs, m.exit_costs, ev.state,
                                        ev.accuracy, m.log_prob, m.budgets,
                                        ev.module.exit_stages))
            records.append(rec)
            bar.update()
        for i, config in enumerate(extra):
            bar.set_postfix_str(f"sample {i}")
            costs = {k: family.cost(k, config) for k in family.members[0].costs}
            records.append(_record(f"s{i}", "sample", evaluate_member(net, config, train, test,
                                                                     **kw), costs))
            bar.update()
        bar.close()
        write_family(FamilyFile(
            space=space.spec, state_dict=net.state_dict(), members=entries,
            metric=family.metric, table_id=table.id,
            alpha={k: p.detach() for k, p in search.alpha.probs().items()},
            budget_picks=family.budget_picks, recal_batches=recal_batches), tmp / "family.pt")
        meta = {"space": space.name, "table_id": table.id, "table_target": table.meta.target,
                "metric": family.metric, "budget_picks": family.budget_picks,
                "recal_batches": recal_batches, "classifier_batches": classifier_batches,
                "finetuned": sorted(own_weights), "finetune_cpu_s": finetune_s}
        write_pareto_json(records, tmp / "pareto.json", **meta)
        plot_pareto(records, tmp / "pareto.png", family.metric)
    out = Path(out)
    logged = log_artifact(out, f"family-{space.name}", meta)
    return ExportResult(out, family, records, logged, sorted(own_weights), finetune_s)


def make_datamodule(kind: str, space, batch_size: int = 128, data_dir: str | None = None):
    """The data module for ``--data``: Fashion-MNIST, or synthetic images shaped like ``space``."""
    from nas.data.splits import FashionMNISTDataModule, SyntheticDataModule

    if kind == "synthetic":
        return SyntheticDataModule(image_size=space.input_size, channels=space.input_channels,
                                   num_classes=space.num_classes,
                                   batch_size=min(batch_size, 32))
    if kind != "fmnist":
        raise ValueError(f"--data: must be fmnist or synthetic, got {kind!r}")
    if (space.input_channels, space.input_size, space.num_classes) != (1, 28, 10):
        raise ValueError(f"--data fmnist needs a 1x28x28, 10-class space; space {space.name!r} "
                         f"is {space.input_channels}x{space.input_size}x{space.input_size} with "
                         f"{space.num_classes} classes (use --data synthetic)")
    return FashionMNISTDataModule(data_dir=data_dir, batch_size=batch_size)


def add_export_args(parser: argparse.ArgumentParser) -> None:
    """The family/export options shared by `hwnas export` and `hwnas quickstart`."""
    parser.add_argument("--members", type=int, default=8, help="members in the chain (8)")
    parser.add_argument("--budgets", action="append", default=[], metavar="METRIC=V1,V2",
                        help="also pick the largest member under each budget, e.g. "
                             "latency_ms=0.5,1,2 (repeatable)")
    parser.add_argument("--recal-batches", type=int, default=20,
                        help="training batches for each member's BN recalibration (20)")
    parser.add_argument("--classifier-batches", type=int, default=100,
                        help="training batches to refit each member's exit classifiers on its "
                             "own features; 0 keeps the shared ones (100)")
    parser.add_argument("--test-batches", type=int, default=None,
                        help="limit the test batches per member (default: the whole test set)")
    parser.add_argument("--samples", type=int, default=0,
                        help="extra random configs to evaluate for the Pareto plot (0)")
    parser.add_argument("--metric", default="latency_ms", help="the chain's cost metric")
    parser.add_argument("--start", choices=["largest", "argmax"], default="largest",
                        help="top of the chain: the largest config, or pass through α's argmax")
    parser.add_argument("--latency-repeats", type=int, default=30,
                        help="timing repeats per member (batch 1, 1 thread)")
    parser.add_argument("--finetune", type=lambda s: [n for n in s.split(",") if n], default=[],
                        metavar="M0,M1",
                        help="members that ship their own weights, fine-tuned from the shared "
                             "ones on the dearest member's soft labels (e.g. the shallow ones "
                             "that trail; default: none, every member shares)")
    parser.add_argument("--finetune-steps", type=int, default=1000,
                        help="batches of fine-tuning per --finetune member (1000)")
    parser.add_argument("--finetune-lr", type=float, default=0.02,
                        help="its SGD learning rate, cosine-annealed to 0 (0.02)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def export_command(argv: list[str]) -> int:
    """`hwnas export`: the nested family of a search checkpoint, with its Pareto front."""
    parser = argparse.ArgumentParser(prog="hwnas export", description=(
        "Export the nested family of a trained search: family.pt, per-member checkpoints "
        "and ONNX, pareto.json and pareto.png."))
    parser.add_argument("--ckpt", required=True, help="search checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="output directory (replaced atomically)")
    parser.add_argument("--data", choices=["fmnist", "synthetic"], default="fmnist")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST root (default: system)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--table", default=None,
                        help="cost table for the members' costs (default: the search's)")
    parser.add_argument("--configs", default=None,
                        help="JSON list of member configs to export instead of α's chain")
    add_export_args(parser)
    parser.add_argument("--onnx-fallback", choices=["float"], default=None,
                        help="ship layers whose weight bits the integer ONNX cannot execute "
                             "in float instead of failing")
    args = parser.parse_args(argv)
    if not Path(args.ckpt).is_file():
        parser.error(f"--ckpt {args.ckpt!r} does not exist")

    from nas.search import load_search

    overrides = {"cost_table": args.table} if args.table else {}
    search = load_search(args.ckpt, **overrides)
    configs = json.loads(Path(args.configs).read_text()) if args.configs else None
    result = export_family(
        search, args.out, make_datamodule(args.data, search.search_space, args.batch_size,
                                          args.data_dir),
        members=args.members, budgets=parse_budgets(args.budgets), metric=args.metric,
        start=args.start, configs=configs, recal_batches=args.recal_batches,
        classifier_batches=args.classifier_batches, test_batches=args.test_batches,
        samples=args.samples,
        latency_repeats=args.latency_repeats, onnx=not args.no_onnx,
        onnx_fallback=args.onnx_fallback, progress=not args.no_progress,
        finetune=args.finetune, finetune_steps=args.finetune_steps,
        finetune_lr=args.finetune_lr)
    print(format_table(result.records, result.family.metric))
    picks = budget_summary(result.records)
    members = sum(r.get("kind") != "sample" for r in result.records)
    own = (f"; own weights: {', '.join(result.finetuned)} "
           f"({result.finetune_cpu_s:.0f} s CPU of fine-tuning)")
    print(f"export: {members} members in {result.out}/ (family.pt, members/, pareto.json, "
          f"pareto.png)" + (own if result.finetuned else "")
          + (f"; picked {picks}" if picks else ""))
    return 0
