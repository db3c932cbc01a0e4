#!/usr/bin/env bash
# The project's main job (mainjob/run.py): sets up .venv if needed, then easy-VQA images on a local
# web -> Ray data pipeline -> SmolLM2-135M-Instruct + EfficientNet-Lite0, ROSE S1 -> S2 -> S3
# (torchrun, two processes data parallel) -> Hugging Face export -> held-out test questions scored
# against the question prior and shuffled images -> runs/main/<method>/report/.
#   bash scripts/main.sh [--method rose|llava|vlora|vora] [--size default|smallest] [--out runs/main]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning,ignore::DeprecationWarning,ignore::FutureWarning}
exec .venv/bin/python -m mainjob.run "$@"
