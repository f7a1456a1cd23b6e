#!/usr/bin/env bash
# Rebuild the measured CPU cost table of the Fashion-MNIST space and check its fidelity
# (the commands behind configs/tables/fmnist_cpu.json and BENCHMARKS.md's fidelity figures).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/hwnas costs build --space configs/spaces/fmnist.yaml --target cpu --batch 1 \
    --threads 1 --clock thread --out configs/tables/fmnist_cpu.json
.venv/bin/hwnas costs check --space configs/spaces/fmnist.yaml \
    --table configs/tables/fmnist_cpu.json --samples 50 --out configs/tables/fmnist_cpu_fidelity
