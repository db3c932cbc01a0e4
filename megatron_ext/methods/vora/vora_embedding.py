"""VoRA's vision embedding in plain PyTorch (nothing from Megatron: it also ships inside Hugging
Face exports, where it is the only vision module of a merged VoRA model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VisionEmbedding(nn.Module):
    """pixels (C, H, W) -> (H/p * W/p, hidden): the only vision parameters left after merging."""

    def __init__(self, patch_size: int, image_size: int, embed_width: int, in_channels: int,
                 hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.patch = nn.Linear(in_channels * patch_size ** 2, embed_width)
        self.norm = nn.RMSNorm(embed_width, eps=eps)
        self.pos = nn.Parameter(torch.randn(self.grid, self.grid, embed_width) * 0.02)
        self.out = nn.Linear(embed_width, hidden_size, bias=False)

    def positions(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == (self.grid, self.grid):
            return self.pos.flatten(0, 1)
        pos = F.interpolate(self.pos.permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                            align_corners=False)  # any resolution: resample the learned grid
        return pos[0].permute(1, 2, 0).flatten(0, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        C, H, W = image.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image of {H}x{W} pixels is not a multiple of the {p}-pixel patch")
        patches = F.unfold(image[None].to(self.patch.weight.dtype), kernel_size=p, stride=p)[0].t()
        x = self.norm(self.patch(patches)) + self.positions(H // p, W // p)
        return self.out(x)
