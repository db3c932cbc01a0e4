"""Inference cost of one easy-VQA sample (its prompt + answer, one forward):

  llm_gflops      the LLM's part by megatron_ext/flops.py's conventions (decoder projections with
                  the real GQA/SwiGLU shapes, full S x S attention scores, LM head), from the
                  export's text config and the sample's token count (image tokens included where
                  the method puts the image in the sequence);
  counted_gflops  every matrix multiply and convolution of that forward as torch's FlopCounterMode
                  counts them: vision encoder and generator included, the method's extra work
                  (rotations, per-image weights) as far as it runs as GEMMs. Attention kernels and
                  triangular solves are not in torch's table, so this is a lower bound.
"""

from __future__ import annotations

import time


def llm_shapes(text_config) -> dict:
    """flops.py's shape dict of an exported LLM (Qwen2 / Llama configs)."""
    heads = text_config.num_attention_heads
    return dict(hidden=text_config.hidden_size, layers=text_config.num_hidden_layers, heads=heads,
                kv_heads=getattr(text_config, "num_key_value_heads", None) or heads,
                head_dim=getattr(text_config, "head_dim", None) or text_config.hidden_size // heads,
                ffn=text_config.intermediate_size, vocab=text_config.vocab_size, gated=True)


def llm_gflops(text_config, tokens: int) -> float:
    from megatron_ext import flops

    llm = llm_shapes(text_config)
    return (flops.decoder_projection_flops(llm, tokens) + flops.attention_score_flops(llm, tokens)
            + flops.lm_head_flops(llm, tokens)) / 1e9


def sample_cost(scorer, question: str, image, answer: str) -> dict:
    """FLOPs and wall time of one forward over a sample's prompt and answer."""
    from torch.utils.flop_counter import FlopCounterMode

    prompt = scorer.prompt(question)
    tokens = scorer.sequence_length(prompt + answer + scorer.end_of_turn, image)
    counter = FlopCounterMode(display=False)
    with counter:
        scorer.continuation_logprobs([prompt], [image], [answer])
    start = time.perf_counter()
    scorer.continuation_logprobs([prompt], [image], [answer])
    text_config = scorer.model.config.get_text_config()
    return {"tokens": tokens, "llm_gflops": llm_gflops(text_config, tokens),
            "counted_gflops": counter.get_total_flops() / 1e9,
            "forward_s": time.perf_counter() - start}
