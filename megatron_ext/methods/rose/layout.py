"""State-dict layouts: Megatron's fused projections <-> ROSE's per-part projections.

A plain GPTModel stores linear_qkv as one weight in query-group order ([g: q heads, k, v] per TP
rank) and linear_fc1 as [gate; up] per TP rank. An equipped ROSE layer stores one linear per
part (linear_qkv.parts.q, .k, .v; linear_fc1.parts.gate, .up; linear_proj.parts.o;
linear_fc2.parts.down). These functions convert between the two for one TP rank's tensors.
"""

from __future__ import annotations

import re

import torch

from megatron_ext.core.projections import PROJECTIONS_OF


def _qkv_split(t: torch.Tensor, config, tp: int) -> dict:
    groups = config.num_query_groups // tp
    per_group = config.num_attention_heads // config.num_query_groups
    hn = config.kv_channels
    g = t.reshape(groups, per_group + 2, hn, *t.shape[1:])
    return {"q": g[:, :per_group].reshape(-1, *t.shape[1:]), "k": g[:, per_group].reshape(-1, *t.shape[1:]),
            "v": g[:, per_group + 1].reshape(-1, *t.shape[1:])}


def fused_to_parts(state_dict: dict, config, equipped_linears: set, tp: int = 1) -> dict:
    """Rename/split a plain GPTModel's (TP-local) state dict into the ROSE layout.

    equipped_linears: {(layer_index_in_state_dict, linear_name)} that are RotatedLinear in the
    target model, e.g. {(3, "linear_qkv"), ...}.
    """
    out = {}
    pat = re.compile(r"(.*decoder\.layers\.(\d+)\.(?:self_attention|mlp)\.)(linear_\w+)\.(weight|bias|_extra_state)$")
    for key, t in state_dict.items():
        m = pat.match(key)
        if not m or (int(m.group(2)), m.group(3)) not in equipped_linears:
            out[key] = t
            continue
        prefix, _, linear, kind = m.groups()
        parts = PROJECTIONS_OF[linear.removeprefix("linear_")]
        if kind == "_extra_state":  # backend metadata (e.g. FP8 scales): each part gets a copy
            parts = parts if linear != "linear_fc1" or config.gated_linear_unit else ("up",)
            pieces = {part: t for part in parts}
        elif linear == "linear_qkv":
            pieces = _qkv_split(t, config, tp)
        elif linear == "linear_fc1" and config.gated_linear_unit:
            pieces = dict(zip(("gate", "up"), t.chunk(2, dim=0)))
        elif linear == "linear_fc1":
            pieces = {"up": t}
        else:
            pieces = {parts[0]: t}
        for part, piece in pieces.items():
            out[f"{prefix}{linear}.parts.{part}.{kind}"] = \
                piece.contiguous() if isinstance(piece, torch.Tensor) else piece
    return out
