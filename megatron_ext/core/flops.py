"""The FLOPs counts every method shares (conventions: megatron_ext/flops.py): the decoder's
projections (shapes from the projection table), attention scores, the LM head, a vision encoder.

`llm` is a shape dict: hidden, layers, heads, kv_heads, head_dim, ffn, vocab, gated.
"""

from __future__ import annotations

from megatron_ext.core.projections import PROJECTION, PROJECTIONS, shape_config


def llm_shape(preset: dict) -> dict:
    """The shape dict of a model preset's llm section."""
    l = preset["llm"]
    heads = l["num_attention_heads"]
    return dict(hidden=l["hidden_size"], layers=l["num_layers"], heads=heads,
                kv_heads=l.get("num_query_groups", heads),
                head_dim=l.get("kv_channels") or l["hidden_size"] // heads,
                ffn=l["ffn_hidden_size"], vocab=l["vocab_size"], gated=True)


def proj_dims(llm: dict) -> dict:
    """(input, output) of each projection of a decoder block (no gate in an ungated MLP)."""
    shape = shape_config(llm["hidden"], llm["heads"], llm["kv_heads"], llm["head_dim"], llm["ffn"])
    names = [p for p in PROJECTIONS if llm["gated"] or p != "gate"]
    return {p: (PROJECTION[p].in_size(shape), PROJECTION[p].out_size(shape)) for p in names}


def decoder_projection_flops(llm: dict, tokens: int) -> float:
    return 2.0 * tokens * llm["layers"] * sum(i * o for i, o in proj_dims(llm).values())


def attention_score_flops(llm: dict, tokens: int) -> float:
    return 4.0 * tokens ** 2 * llm["heads"] * llm["head_dim"] * llm["layers"]


def lm_head_flops(llm: dict, tokens: int) -> float:
    return 2.0 * tokens * llm["hidden"] * llm["vocab"]


def vision_encoder_flops(vision: dict, tokens: int) -> float:
    h = vision["hidden"]
    per_block = 2.0 * tokens * (4 * h * h + 2 * h * vision["ffn"]) + 4.0 * tokens ** 2 * h
    return per_block * vision["layers"]
