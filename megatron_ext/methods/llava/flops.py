"""What LLaVA adds to the plain LLM's forward FLOPs per sample (megatron_ext/flops.py's conventions:
a multiply-add is 2 FLOPs, attention scores count the full S x S matrix, the LM head the text)."""

from __future__ import annotations


def llava_flops(llm: dict, settings, text_tokens: int, visual_tokens: int, visual_dim: int,
                merged: bool = False) -> dict:
    """The visual tokens' share of the decoder (its projections, and the attention growing from
    text^2 to (text + visual)^2) and the 2-layer projector. The vision encoder is not counted (as
    for the other methods' MFU; flops.py's breakdown adds it where a tower is named)."""
    from megatron_ext import flops

    h, seq = llm["hidden"], text_tokens + visual_tokens
    return {
        "decoder projections (visual tokens)": flops.decoder_projection_flops(llm, visual_tokens),
        "attention scores (visual tokens)": flops.attention_score_flops(llm, seq)
                                            - flops.attention_score_flops(llm, text_tokens),
        "projector": 2.0 * visual_tokens * (visual_dim * h + h * h),
    }
