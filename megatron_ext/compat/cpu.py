"""Run Megatron-Core's own code paths on a CPU-only machine (development and CI).

Megatron-Core 0.16 assumes CUDA in a handful of places that have nothing to do with the math:
the current device, the CUDA RNG tracker, a few `device="cuda"` tensors in the pipeline schedule
and the default causal mask. `install()` routes those to the CPU so that the *same* model,
tensor-parallel and 1F1B pipeline code runs over gloo in several processes.

It refuses to do anything when CUDA is available: on a GPU machine nothing here is active.
"""

from __future__ import annotations

import functools
import logging
import types

import torch

log = logging.getLogger(__name__)
_installed = False


def _cpu_device(*_args, **_kwargs) -> torch.device:
    return torch.device("cpu")


def on_cpu(device):
    """Map a CUDA device argument to the CPU, leave anything else alone."""
    if device is None:
        return None
    if isinstance(device, int) or torch.device(device).type == "cuda":
        return torch.device("cpu")
    return device


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = _cpu_device
    cuda.synchronize = lambda *a, **k: None
    # Megatron's RNG tracker saves and restores the "CUDA" generator around tensor-parallel
    # regions (dropout, init); on CPU the default generator plays that role.
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # (torch.manual_seed itself calls torch.cuda.manual_seed_all, so seed the generator directly)
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)


def _patch_schedule_devices() -> None:
    """schedules.py allocates token counters with device="cuda"; give it a torch that says cpu."""
    from megatron.core.pipeline_parallel import schedules

    real_zeros = torch.zeros

    def zeros(*args, device=None, **kwargs):
        return real_zeros(*args, device=on_cpu(device), **kwargs)

    proxy = types.ModuleType("torch_cpu_proxy")
    proxy.__dict__.update({k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    proxy.zeros = zeros
    schedules.torch = proxy


def _patch_causal_mask() -> None:
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils

    @functools.lru_cache(maxsize=32)
    def get_default_causal_mask(sq: int) -> torch.Tensor:
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)

    utils.get_default_causal_mask = get_default_causal_mask
    fused_softmax.get_default_causal_mask = get_default_causal_mask


def install() -> bool:
    """Activate the CPU adapters. Returns True if they are active, False on a CUDA machine."""
    global _installed
    if torch.cuda.is_available():
        return False
    if not _installed:
        _patch_torch_cuda()
        _patch_megatron_rng()
        _patch_schedule_devices()
        _patch_causal_mask()
        _installed = True
        log.info("megatron_ext: CUDA absent, Megatron-Core runs on CPU with gloo")
    return True
