"""Test helper: TP sharding of a full (TP=1) state dict for one rank, the reference the parallel
model tests load into each rank."""

from __future__ import annotations

import torch


def shard_for_rank(full: dict, model: torch.nn.Module, tp_rank: int, tp_size: int) -> dict:
    """Slice a TP=1 state dict (in the model's own layout) to this rank's shards, using Megatron's
    partition attributes on the model's parameters. A stride-s partition (Megatron's fused GLU
    fc1 = [gate; up]) gives each rank its slice of each of the s sub-tensors."""
    params = dict(model.named_parameters())
    out = {}
    for key, t in full.items():
        p = params.get(key)
        if p is not None and getattr(p, "tensor_model_parallel", False) and tp_size > 1:
            dim, stride = p.partition_dim, getattr(p, "partition_stride", 1)
            t = torch.cat([s.chunk(tp_size, dim=dim)[tp_rank] for s in t.chunk(stride, dim=dim)], dim=dim)
        out[key] = t.clone() if torch.is_tensor(t) else t
    return out
