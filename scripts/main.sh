#!/usr/bin/env bash
# The project's main job (mainjob/run.py): sets up .venv if needed, then web image-text pairs ->
# Ray data pipeline -> ROSE S1 -> S2 -> S3 at tensor-parallel size 2 (torchrun, two processes) ->
# Hugging Face export -> a held-out image captioned by transformers -> runs/main/<method>/report/.
#   bash scripts/main.sh [--method rose|vlora|vora] [--size default|smallest] [--out runs/main]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning,ignore::DeprecationWarning,ignore::FutureWarning}
exec .venv/bin/python -m mainjob.run "$@"
