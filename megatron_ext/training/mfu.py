"""Model FLOPs utilisation from megatron_ext/flops.py (the papers' FLOPs conventions).

Training FLOPs per sample = 3 x forward (flops.py's convention) for the LLM at the preset's shape
with the method's injection; MFU = achieved FLOP/s / (peak bf16 FLOP/s of the GPU x GPUs). None
where the device has no known peak (CPU, unlisted GPUs) or the method has no FLOPs model.
"""

from __future__ import annotations

from typing import Optional

import torch


def _llm(preset: dict) -> dict:
    l = preset["llm"]
    heads = l["num_attention_heads"]
    return dict(hidden=l["hidden_size"], layers=l["num_layers"], heads=heads,
                kv_heads=l.get("num_query_groups", heads),
                head_dim=l.get("kv_channels") or l["hidden_size"] // heads,
                ffn=l["ffn_hidden_size"], vocab=l["vocab_size"], gated=True)


def train_flops_per_sample(preset: dict, method: str, text_tokens: int, visual_tokens: int) -> Optional[float]:
    from megatron_ext import flops

    llm = _llm(preset)
    vdim = preset.get("vision", {}).get("hidden_size", llm["hidden"])
    fwd = (flops.decoder_projection_flops(llm, text_tokens)
           + flops.attention_score_flops(llm, text_tokens) + flops.lm_head_flops(llm, text_tokens))
    if method == "rose":
        r = preset.get("rose", {})
        inj = flops.Injection(every=r.get("every", 4), blocks=r.get("blocks", 64),
                              projections=len(r.get("projections", [1] * 7)),
                              generator_width=r.get("generator_width", 512))
        fwd += sum(flops.rose_flops(llm, inj, text_tokens, visual_tokens, vdim).values())
    elif method == "vlora":
        v = preset.get("vlora", {})
        inj = flops.Injection(every=v.get("every", 4), rank=v.get("rank", 64), merged=False,
                              generator_width=v.get("generator_width", 512),
                              generator_blocks=v.get("generator_depth", 8))
        fwd += sum(flops.vlora_flops(llm, inj, text_tokens, visual_tokens, vdim).values())
    elif method == "llava":  # the spec's flops once the registry lands
        from megatron_ext.methods.llava.flops import llava_flops
        fwd += sum(llava_flops(llm, None, text_tokens, visual_tokens, vdim).values())
    elif method != "none":
        return None
    return 3.0 * fwd


def peak_flops_total(world_size: int) -> Optional[float]:
    if not torch.cuda.is_available():
        return None
    from megatron_ext import flops

    peak = flops.peak_flops(torch.cuda.get_device_name())
    return peak * world_size if peak else None


def mfu(flops_per_sample: Optional[float], samples_per_s: float, peak_total: Optional[float]) -> Optional[float]:
    if flops_per_sample is None or peak_total is None:
        return None
    return flops_per_sample * samples_per_s / peak_total
