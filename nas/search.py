"""`SupernetSearch`: the Lightning module of the differentiable, budget-aware search.

Each training step trains (manual optimization):
1. the weights, on a ``train`` batch, by the sandwich rule: the largest, the smallest and
   ``sandwich_random`` members drawn from softmax(α) (or from every choice alike,
   ``sandwich_draws="uniform"``), the smaller members distilled in place from the largest, so
   members sampled later work without retraining (``member_label_weight`` mixes the labels'
   cross-entropy into their loss, as OFA does);
2. α and the weights, on a held-out ``search`` batch, by one relaxed pass: for α the
   exit-weighted task loss plus the budget penalties on E[cost], for the weights every exit's
   loss; Lagrangian multipliers then take a dual-ascent step on the all-reduced ratio.
One backward serves both, so a step runs one relaxed pass. ``alpha_trains_weights=False`` gives
the weights their own relaxed pass on the train batch and α a separate pass and backward (the
weights then never see the search batches: 1.3× the step time, the same accuracy at 360 steps,
BENCHMARKS.md). During the warm-up epochs (α frozen) the weights' own relaxed pass runs.
``sandwich_start`` trains the largest member alone (with the relaxed pass) until that share of
the run is done, as DεpS does.
Two temperatures anneal exponentially over the α phase, batch by batch: ``tau`` of the
relaxed samples (``tau_start`` → ``tau_end``) and ``cost_tau`` of the distribution the budget
prices, softmax(α/cost_tau) (1 → ``cost_tau_end``). The latter moves the budgeted cost from
E[cost] toward the argmax member's cost, so the member that ships lands on the budget, not
only the average. ``arch_entropy`` weighs α's entropy in the α loss, ramped up from 0 over the
same phase: it settles undecided choices, whose argmax would otherwise flip at random. All
three follow from (epoch, batch), so a resumed run anneals identically.
Random draws come from a generator seeded by (seed, epoch, batch), so every rank draws alike.
No step waits for the host: the random members are drawn on the host from softmax(α) as it
was two α steps before (`LaggedProbs`), a NaN/Inf step is skipped on the device (fused
optimizers' ``found_inf``), the multipliers move on the device and the logs stay tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, get_optimizer_class
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel
from torchmetrics.classification import MulticlassAccuracy

from costmodels import CostTable, ExpectedCost
from nas.arch_params import ArchParameters, LaggedProbs, Relaxation
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

    HOST_CHECK_EVERY = 10  # batches between the host's reads of the NaN/Inf counters

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
        channels_last: bool = True,
        alpha_trains_weights: bool = True,
        sandwich_start: float = 0.0,
        sandwich_draws: Literal["alpha", "uniform"] = "alpha",
        member_label_weight: float = 0.0,
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
        self.alpha = ArchParameters(self.search_space)
        metrics = sorted({s.metric for s in specs})
        self.expected = ExpectedCost.for_metrics(self.search_space, table, metrics)
        self.budgets = torch.nn.ModuleList(
            BudgetLoss(s, self.search_space, self.expected[s.metric]) for s in specs)
        self.distill = SoftTargetCrossEntropy()
        self.check_schedule()
        self.add_metrics()
        self.progress = 0.0  # share of the α phase done, set by `anneal`
        self.sandwich = True  # whether this step trains the smallest and random members
        self.scaled_steps = 0  # optimizer steps since the grad scaler's update (`one_scale_update`)
        self.compiled_relaxed = None  # the compiled relaxed forward (`compile`), built lazily
        # NaN/Inf bookkeeping kept on the device, read by the host every `HOST_CHECK_EVERY`
        # batches: steps skipped in a row, the longest such run since the last read (weights,
        # α) and all skipped steps
        self.register_buffer("streak", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("worst", torch.zeros(2, dtype=torch.long), persistent=False)
        self.register_buffer("skipped", torch.zeros((), dtype=torch.long), persistent=False)
        self.draws = LaggedProbs(self.alpha)  # what the sandwich's random members are drawn from

    def check_schedule(self) -> None:
        hp = self.hparams
        for name in ("tau_start", "tau_end", "cost_tau_end"):
            if not hp[name] > 0:
                raise ValueError(f"{name}: temperatures must be positive, got {hp[name]}")
        if not 0 <= hp.sandwich_start < 1:
            raise ValueError(f"sandwich_start: a share of the run in [0, 1), got "
                             f"{hp.sandwich_start}")
        if hp.sandwich_draws not in ("alpha", "uniform"):
            raise ValueError(f"sandwich_draws: 'alpha' or 'uniform', got {hp.sandwich_draws!r}")
        if not 0 <= hp.member_label_weight <= 1:
            raise ValueError(f"member_label_weight: a weight in [0, 1], got "
                             f"{hp.member_label_weight}")

    def add_metrics(self) -> None:
        """Accuracy per exit of the validated member, of its last exit (the exit count moves
        with α) and of the tested member; Lightning computes, syncs and resets them."""
        classes = self.search_space.num_classes
        self.val_acc = torch.nn.ModuleList(
            MulticlassAccuracy(classes) for _ in self.search_space.exit_stages)
        self.val_acc_last = MulticlassAccuracy(classes)
        self.test_acc = MulticlassAccuracy(classes)

    # -- helpers ------------------------------------------------------------------------------
    def draw_probs(self) -> list[torch.Tensor]:
        """What the sandwich's random members are drawn from: softmax(α) (lagged), or every
        decision's choices alike (``sandwich_draws="uniform"``, as OFA trains its family)."""
        if self.hparams.sandwich_draws == "uniform":
            return [torch.full((len(d.choices),), 1 / len(d.choices))
                    for d in self.search_space.decisions]
        return self.draws.probs()

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

    def member_loss(self, logits: list[torch.Tensor], teacher: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
        """A sandwich member's loss: distillation from the largest, ``member_label_weight`` of
        it replaced by the labels' cross-entropy."""
        w = self.hparams.member_label_weight
        loss = self.distill_loss(logits, teacher)
        return loss if w == 0 else (1 - w) * loss + w * self.task_loss(logits, y)

    @property
    def alpha_frozen(self) -> bool:
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
        joint = self.hparams.alpha_trains_weights and not self.alpha_frozen
        self.sandwich = self.share_done(batch_idx) >= self.hparams.sandwich_start
        with self.one_scale_update():
            self.weights_step(w_opt, *batch["train"], gen,
                              alpha=(a_opt, *batch["search"]) if joint else None)
            if not self.alpha_frozen and not joint:
                self.alpha_step(a_opt, *batch["search"], gen)
        if (batch_idx + 1) % self.HOST_CHECK_EVERY == 0 or \
                batch_idx + 1 >= self.trainer.num_training_batches:
            self.check_bad_steps()

    @property
    def memory_format(self) -> torch.memory_format:
        """The network's and the batches' layout (``channels_last`` measured faster on CPU)."""
        return torch.channels_last if self.hparams.channels_last else torch.contiguous_format

    def share_done(self, batch_idx: int) -> float:
        """Share of the run's batches done before this one (0 for an open-ended run)."""
        per_epoch = max(int(self.trainer.num_training_batches), 1)
        total = self.trainer.estimated_stepping_batches
        done = self.current_epoch * per_epoch + batch_idx
        return done / total if total not in (0, float("inf")) else 0.0

    def weights_step(self, opt, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                     alpha: tuple | None = None) -> None:
        # `compile`: the members' quantizers as compiled kernels (`relaxed_forward`: the whole
        # relaxed pass as one graph)
        if alpha is not None:  # α's search batch, in the network's layout too
            alpha = (alpha[0], alpha[1].contiguous(memory_format=self.memory_format), alpha[2])
        with kernels(compiled=self.hparams.compile):
            self._weights_step(opt, x.contiguous(memory_format=self.memory_format), y, gen,
                               alpha)

    def _weights_step(self, opt, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                      alpha: tuple | None = None) -> None:
        """The weights' step; with ``alpha`` (α's optimizer and a search batch) the α pass
        joins it and trains the weights too, in place of the weights' own relaxed pass."""
        if alpha is None:
            self.toggle_optimizer(opt)
        opt.zero_grad()
        # the relaxed pass first: a compiled one (`compile`) updates BN's running statistics
        # in place, which would void what the eager passes before it saved for the backward
        if alpha is None:
            relaxed = {k: p.detach() for k, p in
                       self.alpha.distribution(self.hparams.relaxation, self.tau, gen).items()}
            relaxed_loss = task = self.task_loss(self.relaxed_forward(x, relaxed), y)
        else:
            alpha[0].zero_grad()
            relaxed_loss, task, costs = self.arch_loss(*alpha[1:], gen, trains_weights=True)
        losses = {}
        # the sandwich: before `sandwich_start` the largest trains alone (DεpS)
        members = [self.search_space.smallest()] + [
            self.alpha.sample(gen, self.draw_probs()) for _ in range(self.hparams.sandwich_random)
        ] if self.sandwich else []
        # one backward for the whole step: every weight gets its gradient from one pass
        # (a relaxed one reaches them all), so DDP reduces once, finding no unused parameter
        largest = self.net(x, self.search_space.largest())
        teacher = F.softmax(largest[-1].detach(), -1)
        losses["largest"] = self.task_loss(largest, y)
        for i, member in enumerate(members):
            losses[f"member{i}"] = self.member_loss(self.net(x, member), teacher, y)
        total = relaxed_loss + sum(losses.values())
        losses["relaxed"] = task
        finite = self.finite(total)
        self.manual_backward(total)
        self.step_if(opt, finite)  # clips its gradients first (`on_before_optimizer_step`)
        self.count_skips(finite, "weights")  # with α in the pass: one loss, one step skipped
        if alpha is not None:
            self.all_reduce_alpha_grads()
            self.step_if(alpha[0], finite)
            self.after_arch_step(costs, finite, task)
        self.log("train/loss_relaxed", losses["relaxed"].detach())
        self.log("loss", losses["relaxed"].detach(), prog_bar=True, logger=False)
        self.log("train/loss_largest", losses["largest"].detach())
        if "member0" in losses:
            self.log("train/loss_smallest", losses["member0"].detach())
        if alpha is None:
            self.untoggle_optimizer(opt)

    def relaxed_forward(self, x: torch.Tensor, probs: dict[str, torch.Tensor]
                        ) -> list[torch.Tensor]:
        """The relaxed pass. With ``compile`` the supernet's whole forward runs as one
        `torch.compile`d graph: the probabilities are tensors, so α's moves do not recompile
        (one build with α's gradients, one without: minutes on a CPU, where it is slower than
        the eager native kernels, BENCHMARKS.md). Members stay eager: each is its own graph."""
        if not self.hparams.compile:
            return self.net(x, probs)
        if self.compiled_relaxed is None:
            self.compiled_relaxed = torch.compile(self.net.forward, dynamic=False)
        with kernels(compiled=True), warnings.catch_warnings():  # traceable quantizers
            # the constant masks' lru_cache is traced through, which is what they need
            warnings.filterwarnings("ignore", message=".*lru_cache", category=UserWarning)
            return self.compiled_relaxed(x, probs)

    def alpha_step(self, opt, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> None:
        with kernels(compiled=self.hparams.compile):
            self._arch_step(opt, x.contiguous(memory_format=self.memory_format), y, gen)

    def _arch_step(self, opt, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> None:
        self.toggle_optimizer(opt)
        opt.zero_grad()
        loss, task, costs = self.arch_loss(x, y, gen)
        finite = self.finite(loss)
        # α is outside DDP (see `setup`): its few gradients are averaged here, once
        with self.no_backward_sync():
            self.manual_backward(loss)
        self.all_reduce_alpha_grads()
        self.step_if(opt, finite)
        self.count_skips(finite, "arch")
        self.after_arch_step(costs, finite, task)
        self.untoggle_optimizer(opt)

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                  trains_weights: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[BudgetLoss, torch.Tensor]]]:
        """α's loss on a relaxed pass: (loss, its task part, each budget's E[cost]).
        With ``trains_weights`` the pass also trains the weights, which must then learn every
        exit as in their own relaxed pass: the loss through the network is the exits' mean
        (`task_loss`) and the exit decision keeps its exact gradient, E over exits of each
        exit's (constant) loss. Weighing the exits by P(exit) instead starves the exits the
        budget moves away from: the smallest member, which ends at the first exit, lost 20 pp."""
        probs = self.alpha.distribution(self.hparams.relaxation, self.tau, gen)
        logits = self.relaxed_forward(x, probs)
        # E over the exit decision: the deepest exit is the network's answer
        per_exit = torch.stack([F.cross_entropy(z, y) for z in logits])
        task = (probs["exit"] * per_exit).sum()
        loss, costs = task, []
        if trains_weights:
            loss = self.task_loss(logits, y) + (probs["exit"] * per_exit.detach()).sum()
        # costs under softmax(α/cost_tau), not the noisy sample: a low-variance gradient
        belief = self.alpha.probs(self.cost_tau)
        if self.hparams.arch_entropy:
            indecision = sum(self.alpha.entropies().values())
            loss = loss + self.hparams.arch_entropy * self.progress * indecision
        for b in self.budgets:
            cost, ratio = b.ratio(belief)
            loss = loss + b.penalty(task, ratio)
            costs.append((b, cost))
        return loss, task, costs

    def after_arch_step(self, costs: list[tuple[BudgetLoss, torch.Tensor]],
                        finite: torch.Tensor, task: torch.Tensor) -> None:
        self.dual_step(costs, finite)
        self.draws.push()
        self.log("arch/loss_task", task.detach())
        self.log("arch/tau", self.tau)
        self.log("arch/cost_tau", self.cost_tau)

    def dual_step(self, costs: list[tuple[BudgetLoss, torch.Tensor]],
                  finite: torch.Tensor) -> None:
        """Update each multiplier from the cost it controls (argmax member or E[cost]), on the
        device: the argmax member's table cost is E[cost] at its one-hot distribution."""
        argmax = self.alpha.one_hot_argmax()
        for b, cost in costs:
            m = b.name
            expected = self.all_reduce_mean(cost.detach())
            deployed = self.expected[m](argmax).detach()
            signal = deployed if b.spec.dual_signal == "argmax" else expected
            b.dual_update(signal / b.budget, apply=finite)
            gap = (expected / b.budget - 1).float()
            self.log(f"arch/expected_{m}", expected.float())
            self.log(f"arch/budget_gap_{m}", gap)
            self.log(self.bar_name("gap", b), gap, prog_bar=True, logger=False)
            self.log(f"arch/argmax_gap_{m}", (deployed / b.budget - 1).float())
            self.log(f"arch/lambda_{m}", b.lam.float())

    def bar_name(self, short: str, budget: BudgetLoss) -> str:
        """A progress-bar key: short, so the bar keeps its width (the logger has full names)."""
        return short if budget is self.budgets[0] else f"{short}_{budget.name}"

    # -- NaN/Inf steps: skipped, decided on the device ----------------------------------------
    def finite(self, loss: torch.Tensor) -> torch.Tensor:
        """Whether the loss is finite on every rank: a bool tensor, never read by the host."""
        return torch.isfinite(self.all_reduce_mean(loss.detach().float()))

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip the weights' gradients here, inside their optimizer's step: under a grad scaler
        (16-mixed) Lightning unscales them only just before this hook, so clipping in the
        training step would clip the scaled gradients and shrink every update by the scale."""
        if optimizer is self.optimizers()[0].optimizer:
            self.clip_norm(optimizer)

    def clip_norm(self, inner) -> None:
        """Clip the gradients' norm to ``grad_clip``. Lightning refuses to clip for a fused
        optimizer under mixed precision (it would unscale inside its step); ours never run
        under a grad scaler (`fused_steps`), so there is nothing to unscale."""
        if all(g.get("fused") for g in inner.param_groups):
            torch.nn.utils.clip_grad_norm_(
                [p for g in inner.param_groups for p in g["params"]], self.hparams.grad_clip)
        else:
            self.clip_gradients(inner, self.hparams.grad_clip, "norm")

    @contextlib.contextmanager
    def one_scale_update(self):
        """Under a grad scaler (16-mixed), update its scale once, after the step's last
        optimizer step. Lightning updates it after every ``opt.step()``: in the joint step the
        weights' update moved the scale before α's gradients, from the same backward, were
        unscaled by the new one (so ½ their size after a growth step, twice it after an
        overflow), and the growth interval counted optimizers, not steps. The update sees every
        optimizer's overflow check of the step."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None:
            yield
            return
        own = scaler.__dict__.get("update")
        scaler.update = lambda new_scale=None: None
        self.scaled_steps = 0
        try:
            yield
        finally:
            if own is None:
                del scaler.update
            else:
                scaler.update = own
        if self.scaled_steps:
            scaler.update()

    def step_if(self, opt, finite: torch.Tensor) -> None:
        """``opt.step()`` where ``finite``, else no update at all (momentum and moments too).
        Fused torch optimizers decide on the device from ``found_inf`` (as under AMP's grad
        scaler); any other optimizer makes the host wait for the flag."""
        inner = opt.optimizer
        if all(g.get("fused") for g in inner.param_groups):
            inner.found_inf = (~finite).float()
            opt.step()
        elif bool(finite):
            opt.step()
            self.scaled_steps += 1

    def count_skips(self, finite: torch.Tensor, which: str) -> None:
        """Count skipped steps on the device; a finite weights step ends a run of them."""
        kind = ("weights", "arch").index(which)
        streak = torch.where(finite, torch.zeros_like(self.streak) if kind == 0 else self.streak,
                             self.streak + 1)
        self.streak.copy_(streak)
        self.worst[kind] = torch.maximum(self.worst[kind], streak)
        self.skipped.add_((~finite).long())
        self.log("train/skipped_steps", self.skipped.float())

    def check_bad_steps(self) -> None:
        """Stop once ``max_bad_steps`` steps in a row were skipped: the host reads the counters
        only now and then (the steps in between were skipped, so the weights stay finite)."""
        worst = self.worst.tolist()
        self.worst.zero_()
        limit = self.hparams.max_bad_steps
        for which, n in zip(("weights", "arch"), worst, strict=True):
            if n >= limit:
                self.trainer.should_stop = True
                raise FloatingPointError(
                    f"{limit} {which} steps in a row had a NaN/Inf loss; stopping. The last "
                    "checkpoint holds finite weights: lower the learning rates or check the "
                    "data.")

    @property
    def bad_steps(self) -> int:
        """Steps skipped in a row so far (reads the device: not for use inside a step)."""
        return int(self.streak)

    def setup(self, stage: str) -> None:
        """Keep α out of DDP's gradient buckets: the weight step does not use α and the α step
        does not update the weights, so each backward then reaches every parameter DDP holds
        and plain ``strategy=ddp`` works without searching for unused parameters."""
        alpha = [f"alpha.{name}" for name, _ in self.alpha.named_parameters()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, alpha)

    def no_backward_sync(self):
        """A context in which a backward does not all-reduce DDP's buckets."""
        strategy = self.trainer.strategy
        block = getattr(strategy, "block_backward_sync", None)
        return block() if block is not None else contextlib.nullcontext()

    def all_reduce_alpha_grads(self) -> None:
        for p in self.alpha.parameters():
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
        self.val_member = self.shipped()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x.contiguous(memory_format=self.memory_format), self.val_member)
        exits = [s for s in self.search_space.exit_stages if s <= self.val_member["exit"]]
        for s, acc, z in zip(exits, self.val_acc, logits, strict=False):
            acc.update(z, y)  # logged as a metric: Lightning computes, syncs and resets it
            self.log(f"val/acc_exit{s}", acc)
        self.val_acc_last.update(logits[-1], y)  # its own metric: the last exit moves with α
        self.log("val/acc", self.val_acc_last)
        self.log("acc", self.val_acc_last, prog_bar=True, logger=False)
        self.log("val/loss", self.task_loss(logits, y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        for m, e in self.expected.items():
            self.log(f"arch/shipped_{m}", e.concrete(self.val_member))
        for key, h in self.alpha.entropy().items():
            self.log(f"alpha_entropy/{key}", h)

    def shipping_budgets(self) -> list[Budget]:
        return [Budget(b.name, self.expected[b.name].concrete, b.budget, b.spec.equality)
                for b in self.budgets]

    @torch.no_grad()
    def shipped(self) -> ArchConfig:
        """The member that ships: α's most likely config that meets every budget, landing in
        the band under the first (`nas.shipping`); validation and export use it."""
        alpha = torch.cat([p.detach().flatten() for p in self.alpha.parameters()])
        cached = getattr(self, "_shipped", None)
        if cached is None or not torch.equal(cached[0], alpha):  # α moved since the last call
            self._shipped = (alpha, ship(self.search_space, self.alpha.probs(),
                                         self.shipping_budgets()))
        return self._shipped[1]

    def final_summary(self, shipped: ArchConfig) -> dict[str, float | str]:
        """The shipped member, its table costs against each budget, the argmax member and the
        last validation accuracy (of the shipped member)."""
        summary: dict[str, float | str] = {"final/arch": shipped.to_json(),
                                           "final/argmax": self.alpha.argmax().to_json()}
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
        logits = self.net(x.contiguous(memory_format=self.memory_format), self.shipped())
        self.test_acc.update(logits[-1], y)  # the member that ships
        self.log("test/acc", self.test_acc)

    # -- optimizers and checkpoints -------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        fused = self.fused_steps() and "fused" in inspect.signature(
            get_optimizer_class(hp.weight_optimizer, bind_defaults=False)).parameters
        w_opt = create_optimizer_v2(self.net, hp.weight_optimizer, lr=hp.weight_lr,
                                    weight_decay=hp.weight_decay, momentum=0.9,
                                    **({"fused": True} if fused else {}))
        a_opt = torch.optim.Adam(self.alpha.parameters(), lr=hp.arch_lr, betas=(0.5, 0.999),
                                 weight_decay=hp.arch_weight_decay, fused=self.fused_steps())
        # timm's cosine, stepped by epoch number; one epoch (or an open-ended run) keeps the
        # learning rate constant. Manual optimization: Lightning checkpoints the scheduler and
        # LearningRateMonitor logs it, but the step is ours (`on_train_epoch_start`)
        epochs = self.trainer.max_epochs or 0
        if epochs <= 1:
            return [w_opt, a_opt]
        return [w_opt, a_opt], [CosineLRScheduler(w_opt, t_initial=epochs)]

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step(epoch=self.current_epoch)  # timm's take the epoch number

    def fused_steps(self) -> bool:
        """Fused optimizers skip a NaN/Inf step on the device; not under a grad scaler
        (16-mixed), which skips those steps itself and cannot clip for a fused optimizer."""
        plugin = self.trainer.precision_plugin if self._trainer is not None else None
        return getattr(plugin, "scaler", None) is None

    def on_fit_start(self) -> None:
        self.net.to(memory_format=self.memory_format)

    def on_train_start(self) -> None:
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                # a fused SGD whose first step is skipped would keep an uninitialised momentum
                # buffer; a zero one gives the same first step (buffer = gradient, no dampening)
                zero = group.get("fused") and group.get("momentum") and not group.get("dampening")
                for p in group["params"]:
                    state = opt.state[p]
                    if zero:
                        state.setdefault("momentum_buffer", torch.zeros_like(p))
                    # fused steps read a parameter, its gradient and its state as one layout:
                    # state restored from a run in the other memory format takes the parameter's
                    for key, v in state.items():
                        if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                            state[key] = torch.empty_like(p).copy_(v)

    def on_train_epoch_start(self) -> None:
        schedulers = self.lr_schedulers()  # set by epoch number: a resumed run starts right
        if schedulers is not None:
            self.lr_scheduler_step(schedulers, None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hwnas"] = {
            "space": self.search_space.spec,
            "table_id": self.table_id,
            "cost_table": self.table.to_dict(),  # content, so export and resume never re-read
            "argmax": self.alpha.argmax().to_dict(),
            "shipped": self.shipped().to_dict(),
            "bad_steps": self.bad_steps,
            "skipped_steps": int(self.skipped),
            "draw_probs": self.draws.state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        path = getattr(self.trainer, "ckpt_path", None) if self._trainer else None
        meta = check_search_checkpoint(checkpoint, path or "checkpoint", CKPT_FIX)["hwnas"]
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("arch.")]:  # α's name before it was alpha
            state["alpha." + key.removeprefix("arch.")] = state.pop(key)
        if meta.get("space") not in (None, self.search_space.spec):
            raise ValueError("checkpoint was trained on another search space than "
                             f"{self.hparams.space!r}; pass the space it was trained on")
        self.streak.fill_(meta.get("bad_steps", 0))
        self.skipped.fill_(meta.get("skipped_steps", 0))
        self.draws.load(meta.get("draw_probs"))
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
