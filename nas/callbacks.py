"""The search's own callbacks: the latest checkpoint, α's history (JSON and a plot), the final
report (one line and the W&B summary) and the run's final result (JSON)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytorch_lightning as L
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from nas.search import SupernetSearch, result_line
from supernet.io import write_atomic


class LatestCheckpoint(ModelCheckpoint):
    """``last.ckpt``, rewritten at every validation whatever the monitored metric did.

    Lightning's ``save_last`` now writes ``last.ckpt`` only when a top-k checkpoint was saved in
    the same step, so an epoch that does not improve ``val/acc`` would be lost on a crash. This
    keeps one checkpoint ranked by the step count instead: always the latest."""

    def __init__(self, dirpath: str | None = None):
        super().__init__(dirpath=dirpath, filename="last", monitor="step", mode="max",
                         save_top_k=1, enable_version_counter=False)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Rewrite it with the finished state (every rank calls: saving is collective)."""
        super().on_train_end(trainer, module)
        if self.best_model_path:
            trainer.save_checkpoint(self.best_model_path)


class AlphaHistory(L.Callback):
    """Records softmax(α) per decision every ``every_n_steps`` training steps and at the end;
    at fit end writes ``alpha.json`` (``{"steps": […], "probs": [{key: [p, …]}, …]}``) and
    ``alpha.png`` into the run's directory (beside its checkpoints)."""

    def __init__(self, out_dir: str | None = None, every_n_steps: int = 10):
        self.out_dir = out_dir
        self.every_n_steps = every_n_steps
        self.steps: list[int] = []
        self.history: list[dict[str, list[float]]] = []

    def on_train_start(self, trainer: L.Trainer, module: SupernetSearch) -> None:
        if not self.steps:
            self.record(batches_done(trainer), module)

    def on_train_batch_end(self, trainer: L.Trainer, module: SupernetSearch, outputs, batch,
                           batch_idx: int) -> None:
        step = batches_done(trainer, batch_idx + 1)
        if step % self.every_n_steps == 0:
            self.record(step, module)

    def record(self, step: int, module: SupernetSearch) -> None:
        if self.steps and self.steps[-1] >= step:
            return
        self.steps.append(step)
        self.history.append({k: p.tolist() for k, p in module.alpha.probs().items()})

    def state_dict(self) -> dict:
        return {"steps": self.steps, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = state.get("history", [])
        self.steps = state.get("steps", list(range(len(self.history))))

    def on_fit_end(self, trainer: L.Trainer, module: SupernetSearch) -> None:
        self.record(batches_done(trainer), module)
        if not trainer.is_global_zero:
            return
        out = Path(self.out_dir or run_dir(trainer))
        out.mkdir(parents=True, exist_ok=True)
        (out / "alpha.json").write_text(json.dumps({"steps": self.steps,
                                                    "probs": self.history}))
        png = plot_alpha(self.steps, self.history, module.search_space, out / "alpha.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="alpha", images=[str(png)])


class LearningRates(LearningRateMonitor):
    """Lightning's `LearningRateMonitor`, idle (not an error) in a run without a logger, so the
    search can keep it on by default. Its per-epoch record is taken at the epoch's first batch:
    callbacks' epoch-start hooks run before the module's, which sets the epoch's rate."""

    def on_train_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        pass  # see on_train_batch_start

    def on_train_batch_start(self, trainer: L.Trainer, module, batch, batch_idx: int) -> None:
        if not trainer.loggers:
            return
        if batch_idx == 0:
            super().on_train_epoch_start(trainer, module)
        super().on_train_batch_start(trainer, module, batch, batch_idx)


class FinalReport(L.Callback):
    """At fit end: the one line a person reads first (what ships against what was asked, its
    validation accuracy, the checkpoint) on stdout, and the same figures in the W&B summary."""

    def on_fit_end(self, trainer: L.Trainer, module: SupernetSearch) -> None:
        if not trainer.is_global_zero:
            return
        shipped = module.shipped()
        summary = module.final_summary(shipped)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(summary)
        print(result_line(module.shipping_budgets(), shipped, summary.get("final/val_acc"),
                          module.latest_checkpoint()))


class RunResult(L.Callback):
    """At fit end, writes ``result.json`` into the run's directory (beside its checkpoints):
    ``{"summary": {…}, "checkpoint": …, "epochs": …, "wandb_run": …}``. The summary holds what
    a W&B run summary holds: the last value of every logged scalar and the search's final figures
    (``final/arch``, ``final/latency_ms``, ``final/budget_…``, ``final/val_acc``, …), so a sweep
    or a user reads a run's outcome from one file, whatever the logger and with no W&B server."""

    def __init__(self, path: str | None = None):
        self.path = path

    def on_fit_end(self, trainer: L.Trainer, module: SupernetSearch) -> None:
        if not trainer.is_global_zero:
            return
        wandb_run = getattr(sys.modules.get("wandb"), "run", None)  # when it logs to W&B
        summary = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        result = {"summary": summary | module.final_summary(module.shipped()),
                  "checkpoint": module.latest_checkpoint(), "epochs": trainer.current_epoch,
                  "wandb_run": str(Path(wandb_run.dir).parent) if wandb_run else None}
        path = Path(self.path or run_dir(trainer) / "result.json")
        write_atomic(path, lambda p: p.write_text(json.dumps(result, indent=1) + "\n"))


def batches_done(trainer: L.Trainer, in_epoch: int = 0) -> int:
    """Training batches done (a search step is one batch, whatever its optimizer steps);
    between epochs ``current_epoch`` already counts the finished ones."""
    return trainer.current_epoch * int(trainer.num_training_batches) + in_epoch


def run_dir(trainer: L.Trainer) -> Path:
    """Where a run's files go: beside its checkpoints, else the logger's or the root directory."""
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "dirpath", None):
        return Path(ckpt.dirpath).parent
    return Path(trainer.log_dir or trainer.default_root_dir)


def decision_title(key: str, choices, final: list[float]) -> str:
    """``"stage2.width → 32  P 0.41, lead +0.05"``: what was decided and how firmly (the lead is
    the chosen probability minus the runner-up's)."""
    order = sorted(range(len(final)), key=final.__getitem__, reverse=True)
    lead = final[order[0]] - final[order[1]] if len(order) > 1 else 1.0
    return f"{key} → {choices[order[0]]}  P {final[order[0]]:.2f}, lead +{lead:.2f}"


def plot_alpha(steps: list[int], history: list[dict[str, list[float]]], space,
               path: Path) -> Path:
    """A panel per decision: P(choice) over training steps, the final argmax drawn thick; the
    title names the decision and its lead over the runner-up. Panels whose probabilities
    moved little are zoomed (their y range is printed), so small leads are visible."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    decisions = [d for d in space.decisions if len(d.choices) > 1]
    cols = 4
    rows = math.ceil(len(decisions) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, d in zip(axes.flat, decisions, strict=False):
        final = history[-1][d.key]
        chosen = max(range(len(final)), key=final.__getitem__)
        for i, choice in enumerate(d.choices):
            ax.plot(steps, [h[d.key][i] for h in history], "-", lw=2.4 if i == chosen else 0.9,
                    label=str(choice), zorder=3 if i == chosen else 2)
        ax.set_title(decision_title(d.key, d.choices, final), fontsize=8)
        values = [p for h in history for p in h[d.key]]
        low, high = min(values), max(values)
        if high - low < 0.3:
            pad = max(0.01, 0.1 * (high - low))
            ax.set_ylim(low - pad, high + pad)
        else:
            ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="best")
    for ax in axes.flat[len(decisions):]:
        ax.axis("off")
    fig.supxlabel("training step")
    fig.supylabel("P(choice) = softmax(α)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
