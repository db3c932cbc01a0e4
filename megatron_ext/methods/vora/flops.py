"""VoRA's FLOPs beyond the plain LLM on the longer sequence (megatron_ext/flops.py's conventions)."""

from __future__ import annotations

from megatron_ext.core.flops import proj_dims
from megatron_ext.methods.vora.config import VoRAConfig


def vora_flops(llm: dict, vora: VoRAConfig, text: int, visual: int, visual_dim: int,
               merged: bool = True) -> dict:
    """The LoRA branches of the first vit_layers blocks over text and image tokens; merged VoRA
    (the paper's deployment) is the plain LLM: nothing extra."""
    if merged:
        return {}
    blocks = min(vora.vit_layers, llm["layers"])
    return {"LoRA": 2.0 * (text + visual) * blocks * vora.rank * sum(i + o for i, o in proj_dims(llm).values())}
