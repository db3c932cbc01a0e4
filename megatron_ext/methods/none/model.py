"""The base LLM with nothing injected."""

from __future__ import annotations

import torch

from megatron_ext.core.injected import InjectedGPTModel
from megatron_ext.core.llm_config import gpt_model_kwargs, preset_transformer_config


class BaseLLM(InjectedGPTModel):
    """The base LLM with nothing injected (method "none"); visual inputs are ignored."""

    method = "none"  # its MethodSpec in the registry

    def __init__(self, config, vocab_size: int, max_sequence_length: int, **kwargs):
        super().__init__(config, [], vocab_size, max_sequence_length, **kwargs)

    def equip(self, layer_number, spec):  # never called: no layer is equipped
        return spec

    def make_generator(self):
        return None

    def forward(self, input_ids, position_ids, attention_mask=None, visual_features=None, labels=None, **kwargs):
        return self.language_model(input_ids, position_ids, attention_mask, labels=labels, **kwargs)


def build_none(preset: dict, backend: str = "auto", dtype: torch.dtype = torch.float32,
               config_overrides: dict | None = None) -> BaseLLM:
    config = preset_transformer_config(preset, dtype, config_overrides)
    return BaseLLM(config, backend=backend, **gpt_model_kwargs(preset["llm"]))
