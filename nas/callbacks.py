"""α's history over a search, as JSON and a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytorch_lightning as L
from pytorch_lightning.loggers import WandbLogger

from nas.search import SupernetSearch


class AlphaHistory(L.Callback):
    """Records softmax(α) per decision at every epoch start and at the end; at fit end writes
    ``alpha.json`` and ``alpha.png`` (a panel per decision, a line per choice) into the run's
    directory (beside its checkpoints)."""

    def __init__(self, out_dir: str | None = None):
        self.out_dir = out_dir
        self.history: list[dict[str, list[float]]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: SupernetSearch) -> None:
        self.record(module)

    def record(self, module: SupernetSearch) -> None:
        self.history.append({k: p.tolist() for k, p in module.arch.probs().items()})

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = state.get("history", [])

    def on_fit_end(self, trainer: L.Trainer, module: SupernetSearch) -> None:
        self.record(module)
        if not trainer.is_global_zero:
            return
        out = Path(self.out_dir or run_dir(trainer))
        out.mkdir(parents=True, exist_ok=True)
        (out / "alpha.json").write_text(json.dumps(self.history))
        png = plot_alpha(self.history, module.search_space, out / "alpha.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="alpha", images=[str(png)])


def run_dir(trainer: L.Trainer) -> Path:
    """Where a run's files go: beside its checkpoints, else the logger's or the root directory."""
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "dirpath", None):
        return Path(ckpt.dirpath).parent
    return Path(trainer.log_dir or trainer.default_root_dir)


def plot_alpha(history: list[dict[str, list[float]]], space, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decisions = [d for d in space.decisions if len(d.choices) > 1]
    cols = 4
    rows = math.ceil(len(decisions) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows), squeeze=False)
    epochs = range(len(history))  # start of each epoch, then the end of training
    for ax, d in zip(axes.flat, decisions, strict=False):
        for i, choice in enumerate(d.choices):
            ax.plot(epochs, [h[d.key][i] for h in history], "o-", ms=3, label=str(choice))
        ax.set_title(d.key, fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes.flat[len(decisions):]:
        ax.axis("off")
    fig.supxlabel("epoch")
    fig.supylabel("P(choice)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
