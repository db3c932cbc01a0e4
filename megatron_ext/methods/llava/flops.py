"""What LLaVA adds to the plain LLM's forward FLOPs per sample, in megatron_ext/flops.py's
conventions (those of VLoRA's Table 1, whose LLaVA-v1.5 row tests/model/test_flops.py reproduces).

Its visual tokens are positions of the sequence (MethodSpec.visual_tokens_in_sequence), so the
decoder and attention on them are counted with the LLM's. The 2-layer projector,
2 * visual * (d_vis * h + h^2) (37 GFLOPs of 17,400 at Qwen2.5-7B, 729 tokens: 0.2%), is left out,
as that table leaves it out; so is the vision encoder (flops.py's breakdown adds it where a tower
is named; MFU leaves it out for every method)."""

from __future__ import annotations


def llava_flops(llm: dict, settings, text_tokens: int, visual_tokens: int, visual_dim: int,
                merged: bool = False) -> dict:
    return {}
