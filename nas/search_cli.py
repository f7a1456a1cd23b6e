"""`hwnas search fit|validate|test`: LightningCLI over `SupernetSearch` and a data module.

Every constructor argument is an option (``--model.budget.fraction=0.5``, the form a W&B sweep
agent passes). W&B is the default logger: online when the user has W&B configured, offline
otherwise (``WANDB_MODE=offline`` always works with no network). More than one device or node
selects DDP with unused-parameter detection, since the weight and α steps each leave the other
half of the module without gradients.
"""

from __future__ import annotations

import netrc
import os

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.strategies import DDPStrategy

from nas.callbacks import AlphaHistory
from nas.data import SplitDataModule
from nas.search import SupernetSearch


def wandb_configured() -> bool:
    """True when W&B can log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def default_logger() -> dict:
    return {
        "class_path": "pytorch_lightning.loggers.WandbLogger",
        "init_args": {"project": "hwnas", "save_dir": "runs", "offline": not wandb_configured()},
    }


class SearchCLI(LightningCLI):
    """Adds the search's own callbacks (always on) and picks DDP for multi-process runs."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(AlphaHistory, "alpha_history")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.filename": "epoch{epoch}-acc{val/acc:.4f}",
            "checkpoint.auto_insert_metric_name": False,
        })

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg["trainer"]
        devices = trainer.get("devices")
        many = (isinstance(devices, int) and devices > 1) or (
            isinstance(devices, list | tuple) and len(devices) > 1) or (
            isinstance(devices, str) and devices not in ("auto", "1")) or (
            (trainer.get("num_nodes") or 1) > 1)
        if many and trainer.get("strategy") in (None, "auto"):
            trainer["strategy"] = DDPStrategy(find_unused_parameters=True)


def search_command(argv: list[str]) -> int:
    SearchCLI(
        SupernetSearch,
        SplitDataModule,
        subclass_mode_data=True,
        args=argv,
        trainer_defaults={"logger": default_logger(), "default_root_dir": "runs",
                          "plugins": [{"class_path": "nas.checkpoint_io.SafeCheckpointIO"}]},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0
