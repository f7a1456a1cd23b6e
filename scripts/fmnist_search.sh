#!/usr/bin/env bash
# The Fashion-MNIST search of BENCHMARKS.md: an augmented-Lagrangian budget at 50% of the
# largest member's measured CPU latency, held as a target (configs/search/fmnist.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/fmnist_search}
# one thread: on a shared 2-core machine two threads fighting another process are far slower
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} WANDB_MODE=${WANDB_MODE:-offline} \
    .venv/bin/hwnas search fit --config configs/search/fmnist.yaml \
    --trainer.max_epochs=3 --trainer.limit_train_batches=80 --trainer.default_root_dir="$OUT" \
    --trainer.logger=pytorch_lightning.loggers.CSVLogger --trainer.logger.save_dir="$OUT" \
    --trainer.enable_progress_bar=false "$@"
