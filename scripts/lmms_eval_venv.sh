#!/usr/bin/env bash
# lmms-eval 0.7.3 in its own virtual environment (default .venv-lmms): its requirements
# (torchvision, wandb==0.25.0, datasets, ...) do not install beside the project's pins.
# CPU torch 2.13.0 goes in first and is pinned by a constraint file so nothing swaps it; the
# registry's torchvision is a CUDA build that does not import beside CPU torch, so it is removed
# again when it fails to import (lmms-eval's generic `huggingface` chat model does not need it).
#   VENV=.venv-lmms bash scripts/lmms_eval_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-lmms}
PY="$VENV/bin/python"
[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q torch==2.13.0
echo "torch==2.13.0" > "$VENV/constraints.txt"
# transformers as the project pins it (the exports' remote code is written against it);
# filelock<4: lmms-eval's evaluator patches filelock._api, which filelock 4 no longer has;
# easy-vqa (no dependencies) holds the images of the local easy-VQA task (bench/lmms_eval/)
"$PY" -m pip install -q -c "$VENV/constraints.txt" lmms-eval==0.7.3 transformers==5.23.0 "filelock==3.32.7"
"$PY" -m pip install -q -c "$VENV/constraints.txt" --no-deps easy-vqa==1.0
if ! err=$("$PY" -c "import torchvision" 2>&1); then
  echo "[lmms-eval venv] torchvision does not import beside CPU torch, removing it: $(echo "$err" | tail -1)"
  "$PY" -m pip uninstall -q -y torchvision
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 'torch was replaced: ' + torch.__version__)"
"$PY" -c "import lmms_eval, transformers; print('lmms-eval ready: transformers', transformers.__version__)"
