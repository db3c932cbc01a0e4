#!/usr/bin/env bash
# The PyTorch CUDA build for this node's NVIDIA driver, and whether an installed torch can use it.
#   bash scripts/torch_cuda_tag.sh [TORCH_VERSION]     print the build tag (cu128, cu126) the driver
#                                                      runs; fail with the reason when it is too old
#   bash scripts/torch_cuda_tag.sh --check PYTHON      exit 0 when PYTHON's torch is a CUDA 12 build
#                                                      that sees the GPU; else one line saying why
#                                                      and what to do, exit 1
# The "CUDA Version" nvidia-smi reports is the newest CUDA the driver runs; CUDA 12 builds keep
# torch, Transformer Engine's core (core-cu12) and DALI (cuda120) on one CUDA.
set -euo pipefail
driver_cuda() {
  nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\.[0-9]*\).*/\1/p' | head -1
}
if [ "${1:-}" = "--check" ]; then
  py=${2:?usage: torch_cuda_tag.sh --check PYTHON}
  read -r version cuda usable < <("$py" -c 'import torch; print(torch.__version__, torch.version.cuda, int(torch.cuda.is_available()))')
  drv=$(driver_cuda)
  if [ "$cuda" = "None" ]; then
    why="is a CPU build"
  elif [ "${cuda%%.*}" != 12 ]; then
    why="is built for CUDA $cuda, but Transformer Engine's core (core-cu12) and DALI (cuda120) here are CUDA 12"
  elif [ "$usable" != 1 ]; then
    why="is built for CUDA $cuda and cannot use the GPU (the driver runs CUDA ${drv:-unknown})"
  else
    exit 0
  fi
  tag=$(bash "$0" "${version%%+*}" 2>&1) || { echo "torch $version $why; $tag" >&2; exit 1; }
  echo "torch $version $why: set TORCH_CUDA_INDEX to a PyTorch wheel index for $tag (or update the" \
       "NVIDIA driver), remove the environment and rerun" >&2
  exit 1
fi
torch=${1:-2.13.0}
v=$(driver_cuda)
if [ -z "$v" ]; then
  echo "torch_cuda_tag: nvidia-smi reports no CUDA version (is the NVIDIA driver loaded?)" >&2
  exit 1
fi
major=${v%%.*}
minor=${v#*.}
if [ "$major" -ge 13 ] || { [ "$major" -eq 12 ] && [ "$minor" -ge 8 ]; }; then
  echo cu128
elif [ "$major" -eq 12 ] && [ "$minor" -ge 6 ]; then
  echo cu126
else
  echo "torch_cuda_tag: the driver supports CUDA $v; torch $torch needs CUDA >= 12.6: update the NVIDIA driver" >&2
  exit 1
fi
