"""The Vision-guided Rotation Matrix Generator (ROSE section 2), for the equipped layers of one
pipeline stage.

Every equipped layer owns its generator parameters: one learnable query per (projection, block),
a cross-attention onto the visual tokens, and one zero-initialised linear per projection mapping a
query's output to its block's T (the b(b-1)/2 entries of the skew-symmetric P). Because no
parameter is shared between layers, pipeline stages own disjoint generator parameters: nothing
is reduced across stages and checkpoints reshard by layer, as the decoder does.

The forward runs once per micro-batch for all equipped layers of the stage (docs/ARCHITECTURE.md,
rule 6):
per-layer weights are stacked so that projections are batched matmuls and the attention is a
single scaled_dot_product_attention call over all queries of all layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# relative, and nothing from Megatron: this file also ships inside Hugging Face exports
from .rotation import num_skew_params


class LayerGenerator(nn.Module):
    """Generator parameters of one equipped layer."""

    def __init__(self, projections, blocks: int, block_sizes: dict, visual_dim: int, width: int,
                 t_scale: float = 1.0):
        super().__init__()
        self.projections = tuple(projections)
        self.blocks = blocks
        self.queries = nn.Parameter(torch.randn(len(self.projections) * blocks, width) * width ** -0.5)
        self.q_proj = nn.Linear(width, width)
        self.kv_proj = nn.Linear(visual_dim, 2 * width)
        self.out_proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.to_T = nn.ModuleDict({p: nn.Linear(width, num_skew_params(block_sizes[p]))
                                   for p in self.projections})
        for head in self.to_T.values():  # R = I at step 0: the model starts as the base LLM
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        # T = t_scale * to_T(h). Under Adam each step moves a head weight by about the rate whatever
        # its gradient, so T moves by ~ t_scale x rate x |h|_1 (|h|_1 ~ width): t_scale is the
        # rotation head's own rate without a second optimizer group. A buffer, so checkpoints and
        # exports carry it (RoseConfig.t_scale).
        self.register_buffer("t_scale", torch.tensor(float(t_scale)))


def _stack(mods, attr):
    return torch.stack([getattr(m, attr) for m in mods])


class VRMG(nn.Module):
    """Plain numbers only, so the exported modeling code builds it from config.json: layers, the
    equipped layer numbers this module generates for; projections and blocks as in RoseConfig;
    block_sizes {projection: block size}; visual_dim, the features' width; width and heads, the
    generator's."""

    def __init__(self, layers, projections, blocks: int, block_sizes: dict, visual_dim: int,
                 width: int, heads: int, t_scale: float = 1.0):
        super().__init__()
        self.layers = sorted(layers)
        self.heads = heads
        self.generators = nn.ModuleDict({
            str(l): LayerGenerator(projections, blocks, block_sizes, visual_dim, width, t_scale)
            for l in self.layers})

    def forward(self, visual: torch.Tensor, select: dict | None = None) -> dict:
        """visual: (batch, tokens, visual_dim) -> {(layer, projection): T of (batch, blocks, b(b-1)/2)}.

        select: {projection: fn} maps that projection's query states (batch, blocks, width) to the
        blocks to emit before its head runs (a tensor-parallel rank keeps its own blocks of o and
        down: methods/rose/model.py); default every block."""
        gens = list(self.generators.values())
        g0 = gens[0]
        visual = visual.to(g0.kv_proj.weight.dtype)
        L, B, H = len(gens), visual.shape[0], self.heads
        queries = _stack(gens, "queries")                                    # (L, Q, w)
        q = torch.einsum("lqi,loi->lqo", queries, _stack([m.q_proj for m in gens], "weight")) \
            + _stack([m.q_proj for m in gens], "bias")[:, None]
        kv = torch.einsum("bnv,lov->lbno", visual, _stack([m.kv_proj for m in gens], "weight")) \
            + _stack([m.kv_proj for m in gens], "bias")[:, None, None]
        k, v = kv.chunk(2, dim=-1)                                           # (L, B, n, w)
        Q, w = q.shape[1], q.shape[2]
        q = q[:, None].expand(L, B, Q, w)
        split = lambda t: t.reshape(L * B, t.shape[2], H, w // H).transpose(1, 2)
        attn = F.scaled_dot_product_attention(split(q), split(k), split(v))  # one call, all layers
        attn = attn.transpose(1, 2).reshape(L, B, Q, w)
        out = torch.einsum("lbqi,loi->lbqo", attn, _stack([m.out_proj for m in gens], "weight")) \
            + _stack([m.out_proj for m in gens], "bias")[:, None, None]
        h = F.layer_norm(queries[:, None] + out, (w,), eps=g0.norm.eps)
        h = h * _stack([m.norm for m in gens], "weight")[:, None, None] \
            + _stack([m.norm for m in gens], "bias")[:, None, None]

        T = {}
        nb = g0.blocks
        for li, (layer, gen) in enumerate(zip(self.layers, gens)):
            for pi, p in enumerate(gen.projections):
                hp = h[li, :, pi * nb:(pi + 1) * nb]
                T[(layer, p)] = gen.to_T[p](select[p](hp) if select and p in select else hp) * gen.t_scale
        return T
