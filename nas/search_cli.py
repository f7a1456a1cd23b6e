"""`hwnas search fit|validate|test`: LightningCLI over `SupernetSearch` and a data module.

Every constructor argument is an option (``--model.budget.fraction=0.5``, the form a W&B sweep
agent passes). W&B is the default logger: online when the user has W&B configured, offline
otherwise (``WANDB_MODE=offline`` always works with no network). Any of Lightning's DDP
spellings works (``auto`` with several devices, ``ddp``, ``ddp_spawn``, …): every backward
reaches every parameter DDP holds, so no unused-parameter search is needed.
"""

from __future__ import annotations

import netrc
import os

from pytorch_lightning import loggers
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from nas.callbacks import AlphaHistory, FinalReport, LatestCheckpoint, LearningRates, RunResult
from nas.checkpoint_io import read_search_checkpoint
from nas.data.splits import SplitDataModule
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


class WandbLogger(loggers.WandbLogger):
    """Lightning's W&B logger, less the ``anonymous`` setting it always passes: W&B deprecated
    it and warns on every run, whatever its value."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)


def default_logger() -> dict:
    return {
        "class_path": "nas.search_cli.WandbLogger",
        "init_args": {"project": "hwnas", "save_dir": "runs", "offline": not wandb_configured()},
    }


class SearchCLI(LightningCLI):
    """Adds the search's own callbacks (always on)."""

    def parse_arguments(self, parser, args) -> None:
        # `args` is the command line past `hwnas search`: LightningCLI's warning about `args`
        # beside `sys.argv` is meant for calls from Python and does not apply here
        self.config = parser.parse_args(args)
        ckpt = self.config.get(f"{self.config.get('subcommand')}.ckpt_path")
        if ckpt:  # LightningCLI reads it next: a bad file gets one clear error first
            read_search_checkpoint(ckpt)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(AlphaHistory, "alpha_history")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LatestCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(RunResult, "run_result")
        parser.add_lightning_class_args(FinalReport, "final_report")
        parser.add_lightning_class_args(LearningRates, "lr_monitor")
        parser.add_argument("--allow-foreign-table", type=bool, default=False,
                            help="search with a measured table even if it describes another "
                                 "machine or drifts beyond ±10%% here")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        parser.set_defaults({
            "checkpoint.save_last": False,  # `last_checkpoint` writes last.ckpt every epoch
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.filename": "epoch{epoch}-acc{val/acc:.4f}",
            "checkpoint.auto_insert_metric_name": False,
        })


    def before_instantiate_classes(self) -> None:
        """A new search trusts a measured table only on the host it describes (a quick probe);
        a resumed one keeps the table its checkpoint carries."""
        cfg = self.config.get(self.subcommand) if self.subcommand else None
        if self.subcommand != "fit" or cfg is None or cfg.get("ckpt_path"):
            return
        from costmodels import CostTable
        from costmodels.host import require_host
        from supernet import SearchSpace

        model = cfg["model"]
        require_host(CostTable.load(model["cost_table"]), SearchSpace.from_yaml(model["space"]),
                     model["space"], allow_foreign=bool(cfg.get("allow_foreign_table")),
                     table_option="--model.cost_table")


def search_command(argv: list[str], cli: type[SearchCLI] = SearchCLI) -> int:
    cli(
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
