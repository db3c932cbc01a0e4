"""VLoRA's perceptual weights generator (paper section 3.3), in plain PyTorch.

Nothing from Megatron or the rest of the package: this file also ships inside Hugging Face
exports, whose modeling code builds it from config.json's plain numbers. See model.py for how its
W_v are applied.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class GroupedLinear(nn.Module):
    """G independent linears of the same shape applied as one batched matmul: x (G, ..., in)."""

    def __init__(self, groups: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(groups, out_features))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x):
        shape = x.shape
        y = torch.bmm(x.reshape(shape[0], -1, shape[-1]), self.weight.transpose(1, 2)) + self.bias[:, None]
        return y.reshape(*shape[:-1], -1)


class GroupedNorm(nn.Module):
    def __init__(self, groups: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(groups, width))
        self.bias = nn.Parameter(torch.zeros(groups, width))

    def forward(self, x):  # x: (G, B, L, w)
        return F.layer_norm(x, x.shape[-1:]) * self.weight[:, None, None] + self.bias[:, None, None]


class GeneratorBlock(nn.Module):
    """Pre-norm decoder block of G generators at once: self-attn, cross-attn to the image, FFN."""

    def __init__(self, groups: int, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2, self.norm3 = (GroupedNorm(groups, width) for _ in range(3))
        self.self_qkv = GroupedLinear(groups, width, 3 * width)
        self.self_out = GroupedLinear(groups, width, width)
        self.cross_q = GroupedLinear(groups, width, width)
        self.cross_kv = GroupedLinear(groups, width, 2 * width)
        self.cross_out = GroupedLinear(groups, width, width)
        self.fc1 = GroupedLinear(groups, width, mlp_ratio * width)
        self.fc2 = GroupedLinear(groups, mlp_ratio * width, width)

    def _attend(self, q, k, v):
        G, B = q.shape[:2]
        split = lambda t: t.reshape(G * B, t.shape[2], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(G, B, q.shape[2], -1)

    def forward(self, x, visual):  # x: (G, B, k, w); visual: (G, B, n, w)
        h = self.norm1(x)
        x = x + self.self_out(self._attend(*self.self_qkv(h).chunk(3, dim=-1)))
        h = self.norm2(x)
        x = x + self.cross_out(self._attend(self.cross_q(h), *self.cross_kv(visual).chunk(2, dim=-1)))
        return x + self.fc2(F.gelu(self.fc1(self.norm3(x))))


class PerceptualWeightsGenerator(nn.Module):
    """One generator per weight type, batched: visual features -> W_v for every (block, type).

    `layers` are all equipped blocks of the model (the queries); `local_layers` those of this
    pipeline stage, the only ones whose W_v is produced here.
    """

    def __init__(self, weight_types: Sequence[str], input_dims: dict, rank: int, visual_dim: int,
                 width: int, depth: int, heads: int, mlp_ratio: int, layers: Sequence[int],
                 local_layers: Sequence[int], positional_tokens: int = 0):
        super().__init__()
        self.types = tuple(weight_types)
        self.layers = list(layers)
        self.local = [self.layers.index(l) for l in local_layers]
        self.local_layers = list(local_layers)
        self.rank = rank
        G, w = len(self.types), width
        self.input_dims = dict(input_dims)
        self.visual_proj = nn.Linear(visual_dim, w)
        # the official code's learnable positions of the visual tokens (std 1, as its randn init)
        self.pos_embed = nn.Parameter(torch.randn(1, positional_tokens, w)) if positional_tokens else None
        self.queries = nn.Parameter(torch.randn(G, len(self.layers), w) * 0.02)
        self.blocks = nn.ModuleList(GeneratorBlock(G, w, heads, mlp_ratio) for _ in range(depth))
        self.norm = GroupedNorm(G, w)
        # the shared linear h_p -> in * r of each type (Eq. 4); input sizes differ between types
        self.to_W_v = nn.ModuleDict({t: nn.Linear(w, self.input_dims[t] * self.rank) for t in self.types})
        for head in self.to_W_v.values():
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    def forward(self, visual: torch.Tensor) -> dict:
        """visual (batch, tokens, visual_dim) -> {(layer, type): W_v of (batch, in, rank)}."""
        visual = self.visual_proj(visual.to(self.visual_proj.weight.dtype))
        if self.pos_embed is not None:
            if visual.shape[1] != self.pos_embed.shape[1]:
                raise ValueError(f"the generator's positional embedding covers {self.pos_embed.shape[1]} "
                                 f"visual tokens but the features have {visual.shape[1]}: set "
                                 "vlora.positional_tokens to the tower's token count, or 0")
            visual = visual + self.pos_embed
        G, B = len(self.types), visual.shape[0]
        # a copy, not an expand: a view of a parameter made under no_grad has requires_grad but no
        # grad_fn, which torch's module hooks (FlopCounterMode's tracker) cannot attach to
        x = self.queries[:, None].repeat(1, B, 1, 1)
        kv = visual[None].expand(G, *visual.shape)
        for block in self.blocks:
            x = block(x, kv)
        p_v = self.norm(x)[:, :, self.local]                          # (G, B, k_local, w)
        out = {}
        for g, t in enumerate(self.types):
            W_v = self.to_W_v[t](p_v[g]).unflatten(-1, (self.input_dims[t], self.rank))
            for i, layer in enumerate(self.local_layers):
                out[(layer, t)] = W_v[:, i]
        return out
