#!/usr/bin/env bash
# Print the PyTorch CUDA build tag (cu128, cu126) for this node's NVIDIA driver; fail with the
# reason when the driver is too old. The "CUDA Version" nvidia-smi reports is the newest CUDA
# the driver runs; CUDA 12 builds keep torch, Transformer Engine's core and DALI on one CUDA.
#   bash scripts/torch_cuda_tag.sh [TORCH_VERSION]
set -euo pipefail
torch=${1:-2.13.0}
v=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\.[0-9]*\).*/\1/p' | head -1)
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
