"""`SupernetSearch`: the Lightning module of the differentiable, budget-aware search.

Each training step is two optimizer steps (manual optimization):
1. weights, on a ``train`` batch — the relaxed network plus the sandwich rule (largest,
   smallest and ``sandwich_random`` members drawn from softmax(α)), the smaller members
   distilled in place from the largest, so members sampled later work without retraining;
2. α, on a held-out ``search`` batch — the exit-weighted task loss plus the budget penalties
   on E[cost]; Lagrangian multipliers then take a dual-ascent step on the all-reduced ratio.
Two temperatures anneal exponentially over the α phase, batch by batch: ``tau`` of the
relaxed samples (``tau_start`` → ``tau_end``) and ``cost_tau`` of the distribution the budget
prices, softmax(α/cost_tau) (1 → ``cost_tau_end``). The latter moves the budgeted cost from
E[cost] toward the argmax member's cost, so the member that ships lands on the budget, not
only the average. ``arch_entropy`` weighs α's entropy in the α loss, ramped up from 0 over the
same phase: it settles undecided choices, whose argmax would otherwise flip at random. All
three follow from (epoch, batch), so a resumed run anneals identically.
Random draws come from a generator seeded by (seed, epoch, batch), so every rank draws alike.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel
from torchmetrics.classification import MulticlassAccuracy

from costmodels import CostTable, ExpectedCost
from nas.arch_params import ArchParameters, Relaxation
from nas.budget import BudgetLoss, BudgetSpec
from nas.checkpoint_io import check_search_checkpoint, read_search_checkpoint
from nas.shipping import Budget, describe, ship, within
from supernet import ArchConfig, SearchSpace, SuperNet
from supernet.fused import kernels

# the table a checkpoint carries, while `load_search` builds the module from it
_CARRIED_TABLE: contextvars.ContextVar[CostTable | None] = contextvars.ContextVar(
    "carried_cost_table", default=None)
CKPT_FIX = ("pass the .ckpt written by `hwnas search fit` "
            "(e.g. runs/hwnas/<run>/checkpoints/last.ckpt)")


class SupernetSearch(L.LightningModule):
    """Searches ``space`` under the budgets, with costs from the table at ``cost_table``."""

    def __init__(
        self,
        space: str = "configs/spaces/fmnist.yaml",
        cost_table: str = "configs/tables/fmnist_cpu.json",
        budget: BudgetSpec | None = None,
        extra_budgets: list[BudgetSpec] | None = None,
        relaxation: Relaxation = "gumbel",
        tau_start: float = 5.0,
        tau_end: float = 0.5,
        cost_tau_end: float = 0.1,
        warmup_epochs: int = 1,
        weight_optimizer: str = "sgd",
        weight_lr: float = 0.05,
        weight_decay: float = 4e-5,
        arch_lr: float = 3e-3,
        arch_weight_decay: float = 1e-3,
        arch_entropy: float = 0.0,
        sandwich_random: int = 2,
        label_smoothing: float = 0.1,
        grad_clip: float = 5.0,
        max_bad_steps: int = 10,
        seed: int = 0,
        compile: bool = False,
    ):
        super().__init__()
        specs = [_as_spec(budget or BudgetSpec())] + [_as_spec(b) for b in extra_budgets or []]
        # Lightning records the constructor's locals: the budgets as plain dicts, so the
        # checkpoint loads with weights_only=True and rebuilds the same budgets
        budget, extra_budgets = asdict(specs[0]), [asdict(s) for s in specs[1:]]
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.search_space = SearchSpace.from_yaml(space)
        # `load_search` hands over the table a checkpoint carries: its file may be gone
        table = _CARRIED_TABLE.get() or CostTable.load(cost_table)
        table.check_covers(self.search_space)
        self.table, self.table_id = table, table.id
        with torch.random.fork_rng(devices=[]):  # the initial weights follow `seed` alone
            torch.manual_seed(seed)
            self.net = SuperNet(self.search_space)
        self.arch = ArchParameters(self.search_space)
        metrics = sorted({s.metric for s in specs})
        self.expected = ExpectedCost.for_metrics(self.search_space, table, metrics)
        self.budgets = torch.nn.ModuleList(
            BudgetLoss(s, self.search_space, self.expected[s.metric]) for s in specs)
        self.distill = SoftTargetCrossEntropy()
        n_exits = len(self.search_space.exit_stages)
        self.val_acc = torch.nn.ModuleList(
            MulticlassAccuracy(self.search_space.num_classes) for _ in range(n_exits))
        self.val_acc_last = MulticlassAccuracy(self.search_space.num_classes)
        self.test_acc = MulticlassAccuracy(self.search_space.num_classes)
        for name in ("tau_start", "tau_end", "cost_tau_end"):
            if not self.hparams[name] > 0:
                raise ValueError(
                    f"{name}: temperatures must be positive, got {self.hparams[name]}")
        self.progress = 0.0  # share of the α phase done, set by `anneal`
        self.bad_steps = 0

    # -- helpers ------------------------------------------------------------------------------
    def generator(self, batch_idx: int) -> torch.Generator:
        """Same seed on every rank: the step decides the draw, not the process."""
        return torch.Generator().manual_seed(
            self.hparams.seed * 1_000_003 + self.current_epoch * 10_007 + batch_idx)

    def task_loss(self, logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy averaged over every exit, so early exits learn too."""
        ls = self.hparams.label_smoothing
        return sum(F.cross_entropy(z, y, label_smoothing=ls) for z in logits) / len(logits)

    def distill_loss(self, logits: list[torch.Tensor], teacher: torch.Tensor) -> torch.Tensor:
        return sum(self.distill(z, teacher) for z in logits) / len(logits)

    @property
    def arch_frozen(self) -> bool:
        return self.current_epoch < self.hparams.warmup_epochs

    def anneal(self, batch_idx: int) -> None:
        """Set ``progress``, the share of the α phase done; both temperatures follow from it."""
        hp, trainer = self.hparams, self.trainer
        per_epoch = max(int(trainer.num_training_batches), 1)
        start = hp.warmup_epochs * per_epoch
        total = trainer.estimated_stepping_batches  # inf when neither max_epochs nor max_steps
        done = self.current_epoch * per_epoch + batch_idx - start
        self.progress = min(max(done / max(total - start - 1, 1), 0.0), 1.0)

    @property
    def tau(self) -> float:
        """Temperature of the relaxed samples: ``tau_start`` → ``tau_end``."""
        hp = self.hparams
        return hp.tau_start * (hp.tau_end / hp.tau_start) ** self.progress

    @property
    def cost_tau(self) -> float:
        """Temperature of the distribution the budget prices: 1 → ``cost_tau_end``."""
        return self.hparams.cost_tau_end ** self.progress

    # -- steps --------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> None:
        self.anneal(batch_idx)
        w_opt, a_opt = self.optimizers()
        gen = self.generator(batch_idx)
        self.weights_step(w_opt, *batch["train"], gen)
        if not self.arch_frozen:
            self.arch_step(a_opt, *batch["search"], gen)

    def weights_step(self, opt, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> None:
        # the fused quantizers as compiled kernels: a minute to build once, then faster
        with kernels(compiled=self.hparams.compile):
            self._weights_step(opt, x, y, gen)

    def _weights_step(self, opt, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
                      ) -> None:
        self.toggle_optimizer(opt)
        opt.zero_grad()
        relaxed = {k: p.detach() for k, p in
                   self.arch.distribution(self.hparams.relaxation, self.tau, gen).items()}
        members = [self.search_space.smallest()] + [
            self.arch.sample(gen) for _ in range(self.hparams.sandwich_random)]
        # one backward for the whole sandwich: every weight gets its gradient from one pass,
        # so DDP reduces once and needs no search for unused parameters
        losses = {"relaxed": self.task_loss(self.net(x, relaxed), y)}
        largest = self.net(x, self.search_space.largest())
        teacher = F.softmax(largest[-1].detach(), -1)
        losses["largest"] = self.task_loss(largest, y)
        for i, member in enumerate(members):
            losses[f"member{i}"] = self.distill_loss(self.net(x, member), teacher)
        if self.backward_if_finite(sum(losses.values())) is None:
            self.skip_step(opt, "weights")
        else:
            self.clip_gradients(opt, self.hparams.grad_clip, "norm")
            opt.step()
            self.bad_steps = 0
            self.log("train/loss_relaxed", losses["relaxed"].detach())
            self.log("loss", losses["relaxed"].detach(), prog_bar=True, logger=False)
            self.log("train/loss_largest", losses["largest"].detach())
            self.log("train/loss_smallest", losses["member0"].detach())
        self.untoggle_optimizer(opt)

    def arch_step(self, opt, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> None:
        with kernels(compiled=self.hparams.compile):
            self._arch_step(opt, x, y, gen)

    def _arch_step(self, opt, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> None:
        self.toggle_optimizer(opt)
        opt.zero_grad()
        probs = self.arch.distribution(self.hparams.relaxation, self.tau, gen)
        logits = self.net(x, probs)
        # E over the exit decision: the deepest exit is the network's answer
        per_exit = torch.stack([F.cross_entropy(z, y) for z in logits])
        task = (probs["exit"] * per_exit).sum()
        # costs under softmax(α/cost_tau), not the noisy sample: a low-variance gradient
        belief = self.arch.probs(self.cost_tau)
        loss, costs = task, []
        if self.hparams.arch_entropy:
            indecision = sum(self.arch.entropies().values())
            loss = loss + self.hparams.arch_entropy * self.progress * indecision
        for b in self.budgets:
            cost, ratio = b.ratio(belief)
            loss = loss + b.penalty(task, ratio)
            costs.append((b, cost))
        # α is outside DDP (see `setup`): its few gradients are averaged here, once
        with self.no_backward_sync():
            finite = self.backward_if_finite(loss) is not None
        if not finite:
            self.skip_step(opt, "arch")
        else:
            self.all_reduce_alpha_grads()
            opt.step()
            self.dual_step(costs)
            self.log("arch/loss_task", task.detach())
            self.log("arch/tau", self.tau)
            self.log("arch/cost_tau", self.cost_tau)
        self.untoggle_optimizer(opt)

    def dual_step(self, costs: list[tuple[BudgetLoss, torch.Tensor]]) -> None:
        """Update each multiplier from the cost it controls (argmax member or E[cost])."""
        argmax = self.arch.argmax()
        for b, cost in costs:
            m = b.name
            expected = self.all_reduce_mean(cost.detach())
            deployed = self.expected[m].concrete(argmax)
            signal = deployed if b.spec.dual_signal == "argmax" else float(expected)
            b.dual_update(torch.tensor(signal / b.budget))
            self.log(f"arch/expected_{m}", expected.float())
            self.log(f"arch/budget_gap_{m}", float(expected) / b.budget - 1)
            self.log(self.bar_name("gap", b), float(expected) / b.budget - 1, prog_bar=True,
                     logger=False)
            self.log(f"arch/argmax_gap_{m}", deployed / b.budget - 1)
            self.log(f"arch/lambda_{m}", b.lam.float())

    def bar_name(self, short: str, budget: BudgetLoss) -> str:
        """A progress-bar key: short, so the bar keeps its width (the logger has full names)."""
        return short if budget is self.budgets[0] else f"{short}_{budget.name}"

    def backward_if_finite(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Backward and return the detached loss, or None (no backward) if it is NaN/Inf."""
        if not torch.isfinite(self.all_reduce_mean(loss.detach().float())):
            return None
        self.manual_backward(loss)
        return loss.detach()

    def skip_step(self, opt, which: str) -> None:
        opt.zero_grad()
        self.bad_steps += 1
        self.log("train/skipped_steps", float(self.bad_steps))
        if self.bad_steps >= self.hparams.max_bad_steps:
            self.trainer.should_stop = True
            raise FloatingPointError(
                f"{self.bad_steps} {which} steps in a row had a NaN/Inf loss; stopping. The last "
                f"checkpoint holds finite weights: lower the learning rates or check the data.")

    def setup(self, stage: str) -> None:
        """Keep α out of DDP's gradient buckets: the weight step does not use α and the α step
        does not update the weights, so each backward then reaches every parameter DDP holds
        and plain ``strategy=ddp`` works without searching for unused parameters."""
        alpha = [f"arch.{name}" for name, _ in self.arch.named_parameters()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, alpha)

    def no_backward_sync(self):
        """A context in which a backward does not all-reduce DDP's buckets."""
        strategy = self.trainer.strategy
        block = getattr(strategy, "block_backward_sync", None)
        return block() if block is not None else contextlib.nullcontext()

    def all_reduce_alpha_grads(self) -> None:
        for p in self.arch.parameters():
            if p.grad is not None:
                p.grad = self.all_reduce_mean(p.grad)

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.trainer is None or self.trainer.world_size == 1:
            return t
        return self.trainer.strategy.reduce(t, reduce_op="mean")

    @torch.no_grad()
    def sync_bn_statistics(self) -> None:
        """Average BN running statistics over ranks (each rank saw its own batches), so every
        rank validates, checkpoints and exports the same network."""
        if self.trainer is None or self.trainer.world_size == 1:
            return
        for name, buf in self.net.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.copy_(self.trainer.strategy.reduce(buf, reduce_op="mean"))

    def on_train_end(self) -> None:
        self.sync_bn_statistics()

    # -- validation: the current argmax member, as a user would deploy it ----------------------
    def on_validation_epoch_start(self) -> None:
        self.sync_bn_statistics()
        self.val_arch = self.shipped()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x, self.val_arch)
        exits = [s for s in self.search_space.exit_stages if s <= self.val_arch["exit"]]
        for s, acc, z in zip(exits, self.val_acc, logits, strict=False):
            acc.update(z, y)  # logged as a metric: Lightning computes, syncs and resets it
            self.log(f"val/acc_exit{s}", acc)
        self.val_acc_last.update(logits[-1], y)  # its own metric: the last exit moves with α
        self.log("val/acc", self.val_acc_last)
        self.log("acc", self.val_acc_last, prog_bar=True, logger=False)
        self.log("val/loss", self.task_loss(logits, y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        for m, e in self.expected.items():
            self.log(f"arch/shipped_{m}", e.concrete(self.val_arch))
        for key, h in self.arch.entropy().items():
            self.log(f"alpha_entropy/{key}", h)

    def shipping_budgets(self) -> list[Budget]:
        return [Budget(b.name, self.expected[b.name].concrete, b.budget, b.spec.equality)
                for b in self.budgets]

    @torch.no_grad()
    def shipped(self) -> ArchConfig:
        """The member that ships: α's most likely config that meets every budget, landing in
        the band under the first (`nas.shipping`); validation and export use it."""
        alpha = torch.cat([p.detach().flatten() for p in self.arch.parameters()])
        cached = getattr(self, "_shipped", None)
        if cached is None or not torch.equal(cached[0], alpha):  # α moved since the last call
            self._shipped = (alpha, ship(self.search_space, self.arch.probs(),
                                         self.shipping_budgets()))
        return self._shipped[1]

    def final_summary(self, shipped: ArchConfig) -> dict[str, float | str]:
        """The shipped member, its table costs against each budget, the argmax member and the
        last validation accuracy (of the shipped member)."""
        summary: dict[str, float | str] = {"final/arch": shipped.to_json(),
                                           "final/argmax": self.arch.argmax().to_json()}
        summary.update({f"final/{m}": e.concrete(shipped) for m, e in self.expected.items()})
        for b in self.budgets:
            summary[f"final/budget_{b.name}"] = b.budget
            summary[f"final/ratio_{b.name}"] = self.expected[b.name].concrete(shipped) / b.budget
            summary[f"final/lambda_{b.name}"] = float(b.lam)
        acc = self.trainer.callback_metrics.get("val/acc")
        if acc is not None:
            summary["final/val_acc"] = float(acc)
        return summary

    def latest_checkpoint(self) -> str | None:
        """The newest checkpoint file any checkpoint callback wrote (the one to resume from)."""
        paths = [Path(p) for c in self.trainer.checkpoint_callbacks
                 for p in (c.last_model_path, c.best_model_path) if p]
        paths = [p for p in paths if p.is_file()]
        return str(max(paths, key=lambda p: p.stat().st_mtime)) if paths else None

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.test_acc.update(self.net(x, self.shipped())[-1], y)  # the member that ships
        self.log("test/acc", self.test_acc)

    # -- optimizers and checkpoints -------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        w_opt = create_optimizer_v2(self.net, hp.weight_optimizer, lr=hp.weight_lr,
                                    weight_decay=hp.weight_decay, momentum=0.9)
        a_opt = torch.optim.Adam(self.arch.parameters(), lr=hp.arch_lr, betas=(0.5, 0.999),
                                 weight_decay=hp.arch_weight_decay)
        # timm's cosine, stepped by epoch number; one epoch (or an open-ended run) keeps the
        # learning rate constant. Manual optimization: Lightning checkpoints the scheduler and
        # LearningRateMonitor logs it, but the step is ours (`on_train_epoch_start`)
        epochs = self.trainer.max_epochs or 0
        if epochs <= 1:
            return [w_opt, a_opt]
        return [w_opt, a_opt], [CosineLRScheduler(w_opt, t_initial=epochs)]

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step(epoch=self.current_epoch)  # timm's take the epoch number

    def on_train_epoch_start(self) -> None:
        schedulers = self.lr_schedulers()  # set by epoch number: a resumed run starts right
        if schedulers is not None:
            self.lr_scheduler_step(schedulers, None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hwnas"] = {
            "space": self.search_space.spec,
            "table_id": self.table_id,
            "cost_table": self.table.to_dict(),  # content, so export and resume never re-read
            "argmax": self.arch.argmax().to_dict(),
            "shipped": self.shipped().to_dict(),
            "bad_steps": self.bad_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        path = getattr(self.trainer, "ckpt_path", None) if self._trainer else None
        meta = check_search_checkpoint(checkpoint, path or "checkpoint", CKPT_FIX)["hwnas"]
        if meta.get("space") not in (None, self.search_space.spec):
            raise ValueError("checkpoint was trained on another search space than "
                             f"{self.hparams.space!r}; pass the space it was trained on")
        self.bad_steps = meta.get("bad_steps", 0)
        self.check_carried_table(meta)

    def check_carried_table(self, meta: dict) -> None:
        """The table this module prices with must be the one the checkpoint was searched with."""
        where = f"--cost_table {self.hparams.cost_table!r}"
        carried = meta.get("cost_table")
        if carried is None:
            recorded = meta.get("table_id")
            if recorded not in (None, self.table_id):
                raise ValueError(f"checkpoint was searched with cost table {recorded}, but "
                                 f"{where} is table {self.table_id}; pass the table it was "
                                 "searched with")
            warnings.warn(f"checkpoint carries no cost table (written by an older hwnas); "
                          f"using {where} (table {self.table_id})", stacklevel=2)
            return
        searched = CostTable.from_dict(carried, "the checkpoint's cost table").id
        if searched != self.table_id:
            raise ValueError(f"{where} is cost table {self.table_id}, but the checkpoint was "
                             f"searched with table {searched} (carried inside it); leave "
                             "--cost_table out to use the carried table")


def result_line(budgets: list[Budget], shipped: ArchConfig, val_acc: float | None,
                checkpoint: str | None) -> str:
    """The one line a search ends with: what ships against what was asked."""
    status = "meets" if within(budgets, shipped) else "MISSES"
    acc = "n/a" if val_acc is None else f"{val_acc:.4f}"
    where = f"; checkpoint {checkpoint}" if checkpoint else ""
    return f"shipped member {status} its budget: {describe(budgets, shipped)}; val acc {acc}{where}"


def _as_spec(spec: BudgetSpec | dict) -> BudgetSpec:
    return spec if isinstance(spec, BudgetSpec) else BudgetSpec(**spec)


def load_search(ckpt: str | Path, **overrides) -> SupernetSearch:
    """Load a search checkpoint on the CPU with ``weights_only`` (no code runs from the file)."""
    checkpoint = read_search_checkpoint(ckpt, CKPT_FIX)
    saved = checkpoint["hyper_parameters"]
    if "budget" not in saved and "budget" not in overrides:
        warnings.warn(f"{ckpt} does not record its budget (written by an older hwnas); "
                      "its family and export use the default budget", stacklevel=2)
    carried = checkpoint["hwnas"].get("cost_table")
    table = None
    if "cost_table" not in overrides and carried is not None:
        table = CostTable.from_dict(carried, f"{ckpt}: its cost table")
    elif "cost_table" not in overrides and not Path(str(saved.get("cost_table"))).is_file():
        raise FileNotFoundError(
            f"{ckpt} carries no cost table (written by an older hwnas) and its table file "
            f"{saved.get('cost_table')!r} is gone; pass the table it was searched with (id "
            f"{checkpoint['hwnas'].get('table_id')})")
    token = _CARRIED_TABLE.set(table)
    try:
        return SupernetSearch.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True,
                                                   **overrides)
    finally:
        _CARRIED_TABLE.reset(token)
