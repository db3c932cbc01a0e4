"""Model FLOPs utilisation from megatron_ext/flops.py's conventions.

Training FLOPs per sample = 3 x forward for the LLM at the preset's shape with the method's
injection (its spec's FLOPs model, the branch form as trained); MFU = achieved FLOP/s / (peak bf16
FLOP/s of the GPU x GPUs). None where the device has no known peak (CPU, unlisted GPUs) or the
method has no FLOPs model.
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_ext.core.flops import attention_score_flops, decoder_projection_flops, lm_head_flops, llm_shape
from megatron_ext.flops import peak_flops
from megatron_ext.methods import get_method


def train_flops_per_sample(preset: dict, method: str, text_tokens: int, visual_tokens: int) -> Optional[float]:
    """visual_tokens: per sample, in the sequence where the method puts them there."""
    spec = get_method(method)
    if spec.flops is None:
        return None
    llm = llm_shape(preset)
    vdim = preset.get("vision", {}).get("hidden_size", llm["hidden"])
    seq = text_tokens + (visual_tokens if spec.visual_tokens_in_sequence else 0)
    fwd = (decoder_projection_flops(llm, seq) + attention_score_flops(llm, seq)
           + lm_head_flops(llm, text_tokens))
    fwd += sum(spec.flops(llm, spec.config(preset), text_tokens, visual_tokens, vdim, merged=False).values())
    return 3.0 * fwd


def peak_flops_total(world_size: int) -> Optional[float]:
    if not torch.cuda.is_available():
        return None
    peak = peak_flops(torch.cuda.get_device_name())
    return peak * world_size if peak else None


def mfu(flops_per_sample: Optional[float], samples_per_s: float, peak_total: Optional[float]) -> Optional[float]:
    if flops_per_sample is None or peak_total is None:
        return None
    return flops_per_sample * samples_per_s / peak_total
