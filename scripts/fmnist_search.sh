#!/usr/bin/env bash
# The Fashion-MNIST search of BENCHMARKS.md: Lagrangian budget at 50% of the largest member's
# measured CPU latency, then the family export (BN-recalibrated accuracy of every member).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/fmnist_search}
WANDB_MODE=${WANDB_MODE:-offline} .venv/bin/hwnas search fit --config configs/search/fmnist.yaml \
    --trainer.max_epochs=4 --trainer.limit_train_batches=100 --trainer.default_root_dir="$OUT" \
    --trainer.logger=pytorch_lightning.loggers.CSVLogger --trainer.logger.save_dir="$OUT" \
    --trainer.enable_progress_bar=false "$@"
