"""Megatron's fused projection layouts, so per-projection code (rotations, LoRA branches) can act on
q, k, v or gate, up separately and hand Megatron back the fused tensor it expects.

linear_qkv output per TP rank: [group 0: q heads, k, v | group 1: ... ] (query groups of this rank).
linear_fc1 output per TP rank (gated MLP): [gate shard, up shard].
"""

from __future__ import annotations

import torch

from megatron_ext.core.projections import PROJECTION, PROJECTIONS_OF


def fused_parts(linear: str, config) -> list[tuple[str, int | None]]:
    """(projection, global output size) of a Megatron linear, in fused order; None = the whole output."""
    if linear not in PROJECTIONS_OF:
        raise ValueError(f"no fused layout for Megatron linear '{linear}'")
    parts = PROJECTIONS_OF[linear]
    if len(parts) == 1:
        return [(parts[0], None)]
    if linear == "fc1" and not config.gated_linear_unit:  # an ungated MLP's fc1 is 'up' alone
        parts = ("up",)
    return [(p, PROJECTION[p].out_size(config)) for p in parts]


def interleave_groups(linear: str, config, tp_size: int) -> int:
    """How many groups the parts interleave in (query groups of this rank for qkv, else 1)."""
    return config.num_query_groups // tp_size if linear == "qkv" else 1


def fuse(parts: list[torch.Tensor], groups: int) -> torch.Tensor:
    """Per-projection outputs (..., n_i) -> Megatron's fused (..., sum n_i) layout."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat([t.unflatten(-1, (groups, -1)) for t in parts], dim=-1).flatten(-2)


def unfuse(fused: torch.Tensor, sizes: list[int], groups: int) -> list[torch.Tensor]:
    """Inverse of fuse, for local (per-rank) sizes that sum to fused.shape[-1]."""
    if len(sizes) == 1:
        return [fused]
    pieces = fused.unflatten(-1, (groups, -1)).split([s // groups for s in sizes], dim=-1)
    return [p.flatten(-2) for p in pieces]
