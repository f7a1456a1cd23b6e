"""A callback for the DDP tests: at the end of fit, each rank saves what must agree."""

from pathlib import Path

import pytorch_lightning as L
import torch


class SaveRankState(L.Callback):
    """Writes ``rank<R>.pt`` (the module's state and the step count) into ``out_dir``."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        torch.save({"state": state, "steps": trainer.global_step,
                    "compiled": module.compiled_relaxed is not None},
                   Path(self.out_dir) / f"rank{trainer.global_rank}.pt")
