"""Where this process computes, and the fused CUDA kernels it may use.

One place that answers "CUDA or CPU" for training, so that the model, the host-side counters that
are all-reduced and the fused-kernel switches follow the same device (docs/GPU.md).
"""

from __future__ import annotations

import glob
import importlib.util
import os

import torch


def compute_device() -> torch.device:
    """The current CUDA device when CUDA is present (torchrun's LOCAL_RANK after init_parallel),
    else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def place_model(model: torch.nn.Module, device: torch.device | None = None) -> torch.nn.Module:
    """Move every parameter and buffer onto `device` (default: compute_device()) before DDP wraps
    the model, as Megatron-LM's get_model does. Megatron's own layers are born on the GPU, but the
    vision tower, generators, embeddings and heads are plain modules built on the CPU; Megatron's
    DDP moves only the trainable parameters and its optimizer rejects CPU ones, so a frozen tower
    would otherwise stay on the CPU."""
    device = compute_device() if device is None else device
    model.to(device)
    stray = sorted({str(t.device) for t in list(model.parameters()) + list(model.buffers())
                    if t.device.type != device.type})
    if stray:
        raise RuntimeError(f"place_model: tensors left on {stray} after moving the model to {device}")
    return model


def host_tensor(values, dtype=torch.float64) -> torch.Tensor:
    """A small tensor for a collective (flags, counters, losses) on the compute device: NCCL takes
    CUDA tensors only, gloo CPU ones."""
    return torch.tensor(values, dtype=dtype, device=compute_device())


def fused_softmax_available() -> bool:
    """Megatron-Core's fused masked softmax imports Apex's/Megatron's `scaled_masked_softmax_cuda`
    (and its upper-triangular sibling for causal masks) when the kernel is chosen; without those
    modules the first attention call fails, so the fusion is on only where they import."""
    return torch.cuda.is_available() and all(
        importlib.util.find_spec(m) is not None
        for m in ("scaled_masked_softmax_cuda", "scaled_upper_triang_masked_softmax_cuda"))


def nvidia_gpu_present() -> bool:
    """The NVIDIA driver's device nodes exist (a GPU node, whatever torch can see)."""
    return os.path.exists("/dev/nvidiactl") and bool(glob.glob("/dev/nvidia[0-9]*"))


def require_usable_gpu() -> None:
    """On a GPU node a torch that cannot reach CUDA (a CPU build, a build for a newer CUDA than
    the driver's) would train on the CPU over gloo in fp32, 100x slower, and look fine: refuse.
    PARAMVISION_ALLOW_CPU=1 allows it deliberately."""
    if nvidia_gpu_present() and not torch.cuda.is_available() and os.environ.get("PARAMVISION_ALLOW_CPU") != "1":
        raise RuntimeError(
            f"this node has an NVIDIA GPU but torch {torch.__version__} cannot use it (CUDA build: "
            f"{torch.version.cuda or 'none'}); reinstall with scripts/setup.sh, or set "
            f"PARAMVISION_ALLOW_CPU=1 to run on the CPU on purpose")


# dense bf16 peak FLOP/s by device name, for MFU
PEAK_BF16 = {"H100": 989e12, "H800": 989e12, "H200": 989e12, "A100": 312e12, "A800": 312e12}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16.items():
        if key in device_name:
            return value
    return None
