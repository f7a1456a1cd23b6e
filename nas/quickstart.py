"""`hwnas quickstart`: cost table → short search → nested family export → Pareto table.

On Fashion-MNIST with a CPU table measured on this host (the repository's example table if it
describes this host, else this host's own, built once into ``runs/tables/``); ``--fast`` runs
the same pipeline on the tiny space with synthetic data and an analytic table, as a smoke test.
Only wiring lives here: the work is in `nas.search`, `nas.family.chain`, `nas.family.export`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FMNIST_SPACE = ROOT / "configs" / "spaces" / "fmnist.yaml"
TINY_SPACE = ROOT / "configs" / "spaces" / "tiny.yaml"
FMNIST_TABLE = ROOT / "configs" / "tables" / "fmnist_cpu.json"


def ensure_table(space_file: str | Path, table_path: str | Path, *, measured: bool = True,
                 progress: bool = True, allow_foreign: bool = False,
                 cache_root: str | Path | None = None, **build_kwargs) -> Path:
    """The table to search with: ``table_path`` if it covers the space and describes this host.

    A measured table from another machine, or whose reference layers drift beyond ±10% here
    (`costmodels.host.check_host`), is replaced by this host's own: built once (on this CPU,
    one thread, thread clock; ``build_kwargs`` go to `build_measured_table`) into a cache under
    ``runs/tables/`` and reused while it still matches. ``allow_foreign`` keeps the given table.
    ``measured=False`` prices with the analytic Edge TPU model instead (smoke runs).
    """
    from costmodels import CostTable, build_analytic_table, build_measured_table
    from costmodels.host import CACHE_DIR, cache_path, check_host
    from supernet import SearchSpace

    space, table_path = SearchSpace.from_yaml(space_file), Path(table_path)
    if not measured:
        if table_path.is_file():
            CostTable.load(table_path).check_covers(space)
        else:
            build_analytic_table(space, "edgetpu", space_file=str(space_file)).save(table_path)
        return table_path
    cache = cache_path(space, "cpu", 1, Path(cache_root) if cache_root else CACHE_DIR)
    for candidate in dict.fromkeys([table_path, cache]):
        if not candidate.is_file():
            continue
        table = CostTable.load(candidate)
        table.check_covers(space)
        verdict = check_host(table, space)
        if not verdict.foreign:
            if candidate != table_path:
                print(f"using this host's own table {table.id} ({candidate}), built earlier")
            return candidate
        if allow_foreign:
            print(f"using cost table {table.id} ({candidate}) although it does not describe "
                  f"this host ({verdict.reason}): --allow-foreign-table")
            return candidate
        print(f"cost table {table.id} ({candidate}) does not describe this host "
              f"({verdict.reason})")
    if not table_path.is_file() and table_path != cache:
        print(f"cost table {table_path} is missing")
    print(f"building this host's table into {cache}")
    build_kwargs.setdefault("clock", "thread")
    table = build_measured_table(space, "cpu", threads=1, space_file=str(space_file),
                                 progress=progress, **build_kwargs)
    table.save(cache)
    return cache


def run_search(space_file: str | Path, table_path: str | Path, datamodule, out_dir: str | Path,
               *, epochs: int = 2, limit_train_batches: int | float = 1.0,
               limit_val_batches: int | float = 1.0, progress: bool = True, seed: int = 0,
               **search_kwargs):
    """A short search (Lightning, CPU, one process) that records α's history; returns the
    trained `SupernetSearch` and the path of its checkpoint."""
    import pytorch_lightning as L
    from pytorch_lightning.loggers import CSVLogger

    from nas.callbacks import AlphaHistory
    from nas.search import SupernetSearch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    search_kwargs.setdefault("warmup_epochs", 1 if epochs >= 3 else 0)
    module = SupernetSearch(space=str(space_file), cost_table=str(table_path), seed=seed,
                            **search_kwargs)
    trainer = L.Trainer(
        max_epochs=epochs, limit_train_batches=limit_train_batches,
        limit_val_batches=limit_val_batches, accelerator="cpu", devices=1,
        logger=CSVLogger(str(out_dir), name="search") if progress else False,
        callbacks=[AlphaHistory(str(out_dir))],
        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=progress,
        num_sanity_val_steps=0, default_root_dir=str(out_dir), log_every_n_steps=5,
    )
    trainer.fit(module, datamodule=datamodule)
    ckpt = out_dir / "search.ckpt"
    trainer.save_checkpoint(ckpt, weights_only=False)  # a full, resumable checkpoint
    return module, ckpt


def quickstart_command(argv: list[str]) -> int:
    """`hwnas quickstart`: search and export a nested family end to end."""
    from nas.family.export import add_export_args

    parser = argparse.ArgumentParser(prog="hwnas quickstart", description=(
        "Search Fashion-MNIST under a CPU latency budget for a few minutes, export the nested "
        "family and print its Pareto table."))
    parser.add_argument("--out", default="runs/quickstart", help="run directory")
    parser.add_argument("--epochs", type=int, default=None, help="search epochs (2; --fast: 1)")
    parser.add_argument("--limit-train-batches", type=int, default=None,
                        help="training batches per epoch (30; --fast: 8)")
    parser.add_argument("--fast", action="store_true",
                        help="smoke run: tiny space, synthetic data, analytic table")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST root (default: system)")
    parser.add_argument("--table", default=None,
                        help=f"cost table (default {FMNIST_TABLE.relative_to(ROOT)}; when it "
                             "does not describe this host, this host's table is built into "
                             "runs/tables/; --fast: an analytic table in --out)")
    parser.add_argument("--allow-foreign-table", action="store_true",
                        help="search with --table even if it was measured on another machine "
                             "or its reference layers drift beyond ±10%% here")
    parser.add_argument("--seed", type=int, default=0)
    add_export_args(parser)
    parser.set_defaults(recal_batches=None)
    args = parser.parse_args(argv)
    out = Path(args.out)
    progress = not args.no_progress

    from nas.data.splits import FashionMNISTDataModule, SyntheticDataModule
    from nas.family.chain import parse_budgets
    from nas.family.export import export_family
    from nas.family.pareto import format_table
    from nas.search import result_line

    budgets = parse_budgets(args.budgets)
    if args.fast:
        space_file, epochs = TINY_SPACE, args.epochs or 1
        table = ensure_table(space_file, args.table or out / "tiny_edgetpu.json",
                             measured=False)
        dm = SyntheticDataModule(num_samples=512, batch_size=32, data_seed=args.seed)
        limit, recal, test_batches = args.limit_train_batches or 8, 4, args.test_batches
    else:
        space_file, epochs = FMNIST_SPACE, args.epochs or 2
        table = ensure_table(space_file, args.table or FMNIST_TABLE, progress=progress,
                             allow_foreign=args.allow_foreign_table)
        dm = FashionMNISTDataModule(data_dir=args.data_dir, batch_size=64,
                                    data_seed=args.seed)
        limit, recal, test_batches = args.limit_train_batches or 30, 20, args.test_batches
    print(f"search: {space_file.name}, {epochs} epoch(s) x {limit} batches, table {table}")
    search, ckpt = run_search(space_file, table, dm, out, epochs=epochs,
                              limit_train_batches=limit,
                              limit_val_batches=max(2, limit // 4), progress=progress,
                              seed=args.seed)
    shipped = search.shipped()
    print(f"checkpoint: {ckpt}\nshipped member: {shipped}")
    # the plot and table show the search's own budget and the member the family picks for it
    budgets = budgets or {b.name: [b.budget] for b in search.budgets}
    result = export_family(
        search, out / "export", dm, members=args.members, budgets=budgets,
        metric=args.metric, start=args.start, recal_batches=args.recal_batches or recal,
        classifier_batches=args.classifier_batches, test_batches=test_batches,
        samples=args.samples,
        latency_repeats=args.latency_repeats, onnx=not args.no_onnx, progress=progress,
        seed=args.seed, finetune=args.finetune, finetune_steps=args.finetune_steps,
        finetune_lr=args.finetune_lr)
    print(format_table(result.records, result.family.metric))
    print(f"family: {result.out}/family.pt  plot: {result.out}/pareto.png")
    # the line a person reads first: what ships against what was asked
    acc = search.trainer.callback_metrics.get("val/acc")
    print("quickstart: " + result_line(search.shipping_budgets(), shipped,
                                       None if acc is None else float(acc), str(ckpt)))
    return 0
