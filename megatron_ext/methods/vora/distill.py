"""VoRA's block-wise distillation: an aux head per distilled block whose cosine loss against the
frozen teacher's block adds its gradient where it is computed (like Megatron's MoE aux losses)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_ext.core.context import ConditionedLayer


class AuxHead(nn.Module):
    def __init__(self, hidden_size: int, teacher_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.RMSNorm(hidden_size, eps=eps)
        self.proj = nn.Linear(hidden_size, teacher_dim)

    def forward(self, h):
        return self.proj(self.norm(h))


class _AddLossGradient(torch.autograd.Function):
    """Identity on the activations; the backward also starts the aux loss's backward (scaled)."""

    @staticmethod
    def forward(ctx, output, loss, scale: float):
        ctx.save_for_backward(loss)
        ctx.scale = scale
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad):
        (loss,) = ctx.saved_tensors
        return grad, torch.full_like(loss, ctx.scale), None


@dataclass
class DistillTarget:
    """What a distilled block needs for one micro-batch."""
    batch_index: torch.Tensor     # (n_image_tokens,) positions of the image tokens, image-major
    seq_index: torch.Tensor
    teacher: torch.Tensor         # (n_image_tokens, teacher_dim), same order
    weight: float                 # 1 / number of distilled blocks
    scale: float                  # gradient scale (distill_loss_scale)
    sink: dict                    # layer -> loss (for logging)


class DistilledTransformerLayer(TransformerLayer, ConditionedLayer):
    """Megatron's TransformerLayer plus an AuxHead whose distillation loss is added at this block."""

    def __init__(self, config, submodules, layer_number: int = 1, *, teacher_dim: int, **kwargs):
        super().__init__(config, submodules, layer_number=layer_number, **kwargs)
        self.aux_head = AuxHead(config.hidden_size, teacher_dim, eps=config.layernorm_epsilon)

    def forward(self, *args, **kwargs):
        output, context = super().forward(*args, **kwargs)
        target = self.context.get_optional(self.layer_number, "distill") if self.context is not None else None
        if target is not None:
            h = output.transpose(0, 1)[target.batch_index, target.seq_index]  # output: (s, b, h)
            pred = self.aux_head(h).float()
            loss = (1 - F.cosine_similarity(pred, target.teacher.float(), dim=-1)).mean() * target.weight
            target.sink[self.layer_number] = loss
            if target.scale:
                output = _AddLossGradient.apply(output, loss, target.scale)
        return output, context
