"""VLoRA's perceptual LoRA layers: the low-rank branch of core/low_rank.py with A = W_v, generated
per image and read from the model's ConditioningContext."""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import scatter_to_tensor_model_parallel_region

from megatron_ext.core.low_rank import LowRankMixin


class VLoRAMixin(LowRankMixin):
    """Perceptual LoRA: A = W_v of the sample's image, from the context; B = W_s, learned per layer."""

    kind = "VLORA"

    def lora_A(self) -> torch.Tensor:
        if self.context is None:
            raise RuntimeError(f"layer {self.layer_number}: VLoRA linear is not bound to a model's "
                               "ConditioningContext; build it through VLoRAModel")
        A = torch.cat([self.context.get(self.layer_number, p) for p in self.adapted], dim=-1)
        if self.parallel == "row" and self.tp_group.size() > 1:
            # W_v covers the full input; keep this rank's rows. The backward all-gathers, so the
            # replicated generator sees the gradient of every row on every rank.
            A = scatter_to_tensor_model_parallel_region(A.transpose(-1, -2), group=self.tp_group)
            A = A.transpose(-1, -2)
        return A

    def local_rows(self, A: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full-input W_v (for merging without autograd)."""
        if self.parallel == "row" and self.tp_group.size() > 1:
            return A.chunk(self.tp_group.size(), dim=-2)[self.tp_group.rank()]
        return A
