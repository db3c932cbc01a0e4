"""VoRA's static LoRA on Megatron's parallel linears (the branch and its TP layout: core/low_rank.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from megatron_ext.core.low_rank import LowRankMixin, tp_mark


class LoRAMixin(LowRankMixin):
    """Static LoRA: A is a parameter per part (Kaiming-uniform like PEFT), B zero."""

    kind = "LORA"

    def _init_adapter(self) -> None:
        A = torch.empty(len(self.adapted) * self.rank, self.in_features, dtype=self.config.params_dtype,
                        device=self.weight.device)
        for a in A.split(self.rank):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A_weight = nn.ParameterDict({
            p: tp_mark(nn.Parameter(a.clone()), 1 if self.parallel == "row" else None)
            for p, a in zip(self.adapted, A.split(self.rank))})

    def lora_A(self) -> torch.Tensor:
        return torch.cat([self.lora_A_weight[p] for p in self.adapted], dim=0).t()

    def unload(self) -> None:
        """Fold the adapter into W and turn this module back into the plain backend linear."""
        if not self.merged:
            self.merge()
        del self._merged_delta, self.lora_A_weight, self.lora_B
        self.__class__ = self._base_class
