"""VLoRA's FLOPs beyond the plain LLM (megatron_ext/flops.py's conventions)."""

from __future__ import annotations

from megatron_ext.core.flops import proj_dims
from megatron_ext.methods.vlora.config import VLoRAConfig


def vlora_flops(llm: dict, vlora: VLoRAConfig, text: int, visual: int, visual_dim: int,
                merged: bool = True) -> dict:
    """Perceptual weights W_v (h x r) W_s (r x n) per equipped block and weight type; merged: the
    paper's inference (W_v W_s formed and added to W, its Table 1), else the branch per token."""
    equipped = len(vlora.equipped_layers(llm["layers"]))
    h, rank = llm["hidden"], vlora.rank
    # the paper's five weight types q, k, v, o, mlp; "mlp" is every MLP matrix (gate, up, down),
    # which is how the paper's 24krh^2 counts it (8h^2 of MLP weights per block)
    sizes = list(proj_dims(llm).values())
    if merged:
        extra = sum(2.0 * i * rank * o + i * o for i, o in sizes)
    else:
        extra = sum(2.0 * text * rank * (i + o) + text * o for i, o in sizes)
    w, n = vlora.generator_width, vlora.generator_depth
    gen = n * (2.0 * equipped * 4 * w * w + 4.0 * equipped ** 2 * w       # self-attention
               + 2.0 * equipped * 2 * w * w + 2.0 * visual * visual_dim * 2 * w
               + 4.0 * equipped * visual * w + 2.0 * equipped * 8 * w * w)  # cross-attn, FFN
    gen += 2.0 * equipped * w * h * rank
    return {"perceptual weights": equipped * extra, "generator": gen}
