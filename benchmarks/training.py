"""Training shared by the figures: the search (run once per results folder and reused), and
networks trained from scratch with the search's own weight recipe.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from benchmarks.common import (
    SEARCH_CONFIGS,
    Clock,
    Options,
    datamodule,
    jsonable,
    load_space,
    load_table,
    mode,
    table_path,
)


# -- the search -------------------------------------------------------------------------------
def search_kwargs(quick: bool, out_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """The model section of the mode's search config (configs/search/*.yaml), on its space and
    table; ``overrides`` replace single arguments."""
    cfg = yaml.safe_load(SEARCH_CONFIGS[quick].read_text())["model"]
    cfg.update(space=str(mode(quick).space_file), cost_table=str(table_path(quick, out_dir)),
               seed=0)
    if quick:  # the tiny config's 30% lies below the smallest member on a measured CPU table
        cfg["budget"] = {**cfg["budget"], "fraction": 0.5}
    cfg.update(overrides)
    return cfg


def step_clock_callback(device: torch.device):
    """A Lightning callback timing every training step (both of the search's optimizer
    steps), without data loading or validation."""
    import pytorch_lightning as L

    class StepClock(L.Callback):
        def __init__(self):
            self.clock = Clock()
            self._lap = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self._lap = self.clock.lap(device)
            self._lap.__enter__()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self._lap.__exit__(None, None, None)

    return StepClock()


def run_search(quick: bool, out_dir: str | Path, opts: Options, *, epochs: int | None = None,
               limit: int | None = None, batch_size: int | None = None,
               callbacks: tuple = (), **overrides: Any):
    """A Lightning search (no validation, no checkpoints); returns the trained module and its
    step times (``wall_s``, ``cpu_s``, ``steps``, ``samples``)."""
    import pytorch_lightning as L

    from nas.search import SupernetSearch

    m = mode(quick)
    epochs, limit = epochs or m.epochs, limit or m.limit
    bs = batch_size or m.batch_size
    torch.manual_seed(0)
    module = SupernetSearch(**search_kwargs(quick, out_dir, **overrides))
    clock = step_clock_callback(opts.device)
    trainer = L.Trainer(
        max_epochs=epochs, limit_train_batches=limit, limit_val_batches=0,
        accelerator=opts.accelerator, devices=1, logger=False,
        callbacks=[clock, *callbacks], enable_checkpointing=False,
        enable_progress_bar=opts.progress, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule(quick, opts.data_dir, bs))
    timing = {**clock.clock.summary(), "fit_wall_s": time.perf_counter() - start,
              "samples": clock.clock.count * bs, "batch_size": bs, "epochs": epochs,
              "limit_train_batches": limit}
    return module.cpu(), timing


def recipe_of(search) -> dict[str, Any]:
    """The weight-training recipe of a search, for training networks from scratch alike."""
    hp = search.hparams
    keys = ("weight_optimizer", "weight_lr", "weight_decay", "label_smoothing", "grad_clip")
    return {k: hp[k] for k in keys}


def shared_search(quick: bool, out_dir: str | Path, opts: Options) -> dict[str, Any]:
    """The mode's search and its exported family, run once and reused by every figure that
    needs a trained family (cached in ``<out_dir>/shared``)."""
    from costmodels import table_cost
    from nas.family.export import export_family

    d = Path(out_dir) / "shared"
    info_path = d / "search.json"
    if info_path.is_file() and (d / "export" / "family.pt").is_file():
        return json.loads(info_path.read_text())
    m = mode(quick)
    search, timing = run_search(quick, out_dir, opts)
    dm = datamodule(quick, opts.data_dir)
    export = export_family(search, d / "export", dm, members=m.members,
                           recal_batches=m.recal_batches,
                           classifier_batches=m.classifier_batches,
                           latency_repeats=m.latency_repeats,
                           onnx=False, progress=opts.progress)
    space, table = search.search_space, load_table(quick, out_dir)
    gen = torch.Generator().manual_seed(0)
    sampled = [search.alpha.sample(gen) for _ in range(64)]
    macs = {
        "largest": table_cost(space, table, space.largest(), "macs"),
        "smallest": table_cost(space, table, space.smallest(), "macs"),
        "alpha_sample_mean": sum(table_cost(space, table, a, "macs") for a in sampled) / 64,
    }
    info = {
        "timing": timing, "recipe": recipe_of(search),
        "search_kwargs": search_kwargs(quick, out_dir),
        "sandwich_random": search.hparams.sandwich_random,
        "argmax": search.alpha.argmax().to_dict(), "macs": macs,
        "export_dir": str(d / "export"), "records": export.records,
    }
    info_path.write_text(json.dumps(jsonable(info), indent=1) + "\n")
    return json.loads(info_path.read_text())


def search_macs(shared: Mapping[str, Any]) -> float:
    """Training MACs of the search, counting a backward pass as two forwards. A weight step
    runs the relaxed network at full size, the largest, the smallest and the sandwich's random
    members (at their mean MACs under the final α); after the warm-up epochs an α step runs
    the relaxed network once more, on a batch of the same size."""
    m, t = shared["macs"], shared["timing"]
    weights = (2 * m["largest"] + m["smallest"]
               + shared["sandwich_random"] * m["alpha_sample_mean"])
    warmup = min(shared["search_kwargs"].get("warmup_epochs", 0), t["epochs"])
    alpha_steps = t["steps"] - warmup * t["limit_train_batches"]
    return 3.0 * t["batch_size"] * (weights * t["steps"] + m["largest"] * alpha_steps)


# -- training from scratch --------------------------------------------------------------------
class MemberNet(nn.Module):
    """One member alone: a freshly initialised supernet run at one concrete config — the same
    network `extract` gives, but with its weight quantizers and activation step sizes trained
    (an extracted network holds baked weights and frozen quantizers)."""

    def __init__(self, space, config, seed: int = 0):
        super().__init__()
        from supernet import SuperNet

        torch.manual_seed(seed)
        self.net = SuperNet(space)
        self.config = space.validate(config)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net(x, self.config)

    def extract(self) -> nn.Module:
        from supernet import extract

        return extract(self.net, self.config)


class ListOutput(nn.Module):
    """Wraps a single-output classifier so it returns a list of exit logits, like ours."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.model(x)]


def train_from_scratch(model: nn.Module, dm, recipe: Mapping[str, Any], *, epochs: int,
                       limit: int, device: torch.device) -> dict[str, float]:
    """Train ``model`` (returns a list of exit logits) on the train split with the search's
    weight recipe: the same optimizer, cosine schedule by epoch, label smoothing, loss over
    every exit, gradient clipping, batches and epochs. Returns its step times."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    model.to(device).train()
    opt = create_optimizer_v2(model, recipe["weight_optimizer"], lr=recipe["weight_lr"],
                              weight_decay=recipe["weight_decay"], momentum=0.9)
    schedule = CosineLRScheduler(opt, t_initial=max(epochs, 1))
    loader, clock = dm.weights_dataloader(), Clock()
    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(epochs):
        schedule.step(epoch)
        loader.sampler.set_epoch(epoch)
        for i, (x, y) in enumerate(loader):
            if i >= limit:
                break
            x, y = x.to(device), y.to(device)
            with clock.lap(device):
                opt.zero_grad(set_to_none=True)
                logits = model(x)
                loss = sum(F.cross_entropy(z, y, label_smoothing=recipe["label_smoothing"])
                           for z in logits) / len(logits)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, recipe["grad_clip"])
                opt.step()
    bs = loader.batch_size
    return {**clock.summary(), "samples": clock.count * bs, "batch_size": bs, "epochs": epochs,
            "limit_train_batches": limit}


def accuracy_on_test(model: nn.Module, dm, num_classes: int) -> list[float]:
    """Top-1 test accuracy of every exit, on the CPU."""
    from nas.family.recalibrate import exit_accuracy

    return exit_accuracy(model.cpu().eval(), dm.test_dataloader(), num_classes)



def family_path(out_dir: str | Path) -> Path:
    """Where the `one_vs_many` run in ``out_dir`` exported its family."""
    return Path(out_dir) / "shared" / "export" / "family.pt"


def exported_family(name: str, out_dir: str | Path):
    """The `one_vs_many` run's search record, exported family and shared supernet (eval mode),
    for the figures that read that run's ``<out_dir>/shared``: ``(info, family, net)``."""
    from deploy import FamilyError, read_family
    from supernet import SearchSpace, SuperNet

    shared_dir = Path(out_dir) / "shared"
    info_path = shared_dir / "search.json"
    if not (info_path.is_file() and family_path(out_dir).is_file()):
        raise SystemExit(f"{name}: no exported family in {shared_dir}; run one_vs_many into "
                         f"the same --out first")
    try:
        family = read_family(family_path(out_dir))
    except FamilyError as e:
        raise SystemExit(f"{name}: {e}") from None
    net = SuperNet(SearchSpace(family.space))
    net.load_state_dict(family.state_dict)
    return json.loads(info_path.read_text()), family, net.eval()
def twin_path(quick: bool, out_dir: str | Path, config, recipe: Mapping[str, Any],
              seed: int = 0) -> Path:
    """Where a from-scratch twin's result is cached: keyed by config (or a baseline's name),
    recipe, sizes and, past the first, the initialisation seed."""
    m = mode(quick)
    what = config if isinstance(config, str) else config.to_dict()
    parts = [what, dict(recipe), m.epochs, m.limit, m.batch_size] + ([seed] if seed else [])
    key = json.dumps(parts, sort_keys=True)
    name = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(out_dir) / "shared" / "scratch" / f"{name}.json"


def scratch_twin(quick: bool, out_dir: str | Path, opts: Options, config,
                 recipe: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """A member trained from scratch with ``recipe`` for the mode's epochs and batches, then
    extracted and scored (cached in ``<out_dir>/shared/scratch`` by config, recipe and seed).
    ``seed`` draws the initial weights; the data and its order are the search's."""
    from costmodels import table_cost

    m = mode(quick)
    path = twin_path(quick, out_dir, config, recipe, seed)
    if path.is_file():
        return json.loads(path.read_text())
    space, dm = load_space(quick), datamodule(quick, opts.data_dir)
    twin = MemberNet(space, config, seed)
    timing = train_from_scratch(twin, dm, recipe, epochs=m.epochs, limit=m.limit,
                                device=opts.device)
    static = twin.cpu().extract()
    result = {
        "config": config.to_dict(), "seed": seed, "timing": timing,
        "accuracy": accuracy_on_test(static, dm, space.num_classes),
        "macs": table_cost(space, load_table(quick, out_dir), config, "macs"),
    }
    store_trained(path, result, static)
    return result


def store_trained(path: Path, result: Mapping[str, Any], model: nn.Module) -> None:
    """Cache a network trained from scratch: its weights (``.pt``), then its result (``.json``,
    the mark that the entry is whole: a crash between the two leaves no half entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path.with_suffix(".pt"))
    path.write_text(json.dumps(jsonable(result), indent=1) + "\n")


def load_twin(quick: bool, out_dir: str | Path, opts: Options, config,
              recipe: Mapping[str, Any]) -> tuple[dict[str, Any], nn.Module]:
    """`scratch_twin`'s result and its trained, extracted network."""
    from supernet import SuperNet, extract

    result = scratch_twin(quick, out_dir, opts, config, recipe)
    space = load_space(quick)
    static = extract(SuperNet(space).eval(), config)
    weights = twin_path(quick, out_dir, config, recipe).with_suffix(".pt")
    static.load_state_dict(torch.load(weights, weights_only=True))
    return result, static.eval()
