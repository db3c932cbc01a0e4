"""Inference cost of one easy-VQA sample (its prompt + answer, one forward):

  llm_gflops      the LLM's part by megatron_ext/flops.py's conventions (decoder projections with
                  the real GQA/SwiGLU shapes, full S x S attention scores, LM head), from the
                  export's text config and the sample's token count: its text, plus its visual
                  tokens where the method puts the image in the sequence (--visual-tokens
                  overrides how many);
  counted_gflops  every matrix multiply and convolution of that forward as torch's FlopCounterMode
                  counts them: vision encoder and generator included, the method's extra work
                  (rotations, per-image weights) as far as it runs as GEMMs. Attention kernels and
                  triangular solves are not in torch's table, so this is a lower bound.
"""

from __future__ import annotations

import time

import torch

from megatron_ext.core import flops


def llm_shapes(text_config) -> dict:
    """flops.py's shape dict of an exported LLM (Qwen2 / Llama configs)."""
    heads = text_config.num_attention_heads
    return dict(hidden=text_config.hidden_size, layers=text_config.num_hidden_layers, heads=heads,
                kv_heads=getattr(text_config, "num_key_value_heads", None) or heads,
                head_dim=getattr(text_config, "head_dim", None) or text_config.hidden_size // heads,
                ffn=text_config.intermediate_size, vocab=text_config.vocab_size, gated=True)


def llm_gflops(text_config, tokens: int) -> float:
    llm = llm_shapes(text_config)
    return (flops.decoder_projection_flops(llm, tokens) + flops.attention_score_flops(llm, tokens)
            + flops.lm_head_flops(llm, tokens)) / 1e9


def visual_tokens(scorer, image) -> tuple[int, bool]:
    """(visual tokens one image gives this model, whether they are in the sequence): its
    placeholders (VoRA, LLaVA: counted in a processed prompt), or the encoder features its
    generator reads; (0, False) without vision."""
    if not scorer.sees_images:
        return 0, False
    token = getattr(scorer.processor, "image_token", None)
    if token:
        ids = scorer._inputs([""], [image])["input_ids"]
        placeholders = int((ids == scorer.tokenizer.convert_tokens_to_ids(token)).sum())
        if placeholders:
            return placeholders, True
    pixels = scorer._inputs([""], [image])["pixel_values"]
    with torch.no_grad():
        return int(scorer.model.visual_features(pixels).shape[1]), False


def sample_cost(scorer, question: str, image, answer: str, visual_override: int | None = None) -> dict:
    """FLOPs and wall time of one forward (logits at every position) over a sample's prompt and
    answer, as the model reads them."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = scorer._inputs([scorer.prompt(question) + answer + scorer.end_of_turn], [image])
    tokens = int(batch["input_ids"].shape[1])  # image placeholders included
    visual, in_sequence = visual_tokens(scorer, image)
    if visual_override is not None:
        tokens += (visual_override - visual) if in_sequence else 0
        visual = visual_override
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        with counter:
            scorer.model(**batch)
        start = time.perf_counter()
        scorer.model(**batch)
        seconds = time.perf_counter() - start
    return {"tokens": tokens, "visual_tokens": visual, "visual_in_sequence": in_sequence,
            "llm_gflops": llm_gflops(scorer.model.config.get_text_config(), tokens),
            "counted_gflops": counter.get_total_flops() / 1e9, "forward_s": seconds}
