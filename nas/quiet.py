"""Lightning's notices that say nothing about the run, removed at their source for every
`hwnas` command (imports nothing heavy, so `hwnas --help` stays instant)."""

from __future__ import annotations

import logging
import warnings


class _DropTip(logging.Filter):
    """Lightning advertises its hosted logger on every run; a search log has no use for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


def quiet_lightning() -> None:
    """Remove the two notices Lightning prints on every run that say nothing about the run."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropTip())
    # Lightning 2.6 builds torch's deprecated LeafSpec whenever it iterates a data loader
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*",
                            category=FutureWarning)
