#!/usr/bin/env bash
# The project's main job on this machine: sets up .venv if needed, then runs a ROSE S1 training
# run at tensor-parallel size 2 in two processes (Megatron-Core over gloo on CPU, NCCL on GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning,ignore::DeprecationWarning}
exec .venv/bin/torchrun --standalone --nproc-per-node 2 -m megatron_ext.train --config configs/train/s1-rose-tiny.yaml parallel.tensor=2 "$@"
