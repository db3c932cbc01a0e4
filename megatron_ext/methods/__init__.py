"""One entry point for every kind of injection: the method is a config choice on the same LLM.

    model = build_model("tiny-vlora", method="vlora")      # or "rose", "vora", "llava", "none"

"none" is the plain base LLM (Megatron's GPTModel from the same layer specs), the reference every
method must equal at initialisation. Without `method`, a preset with exactly one method section
(rose:, vlora:, vora:, llava:) selects it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_ext.model import InjectedGPTModel

METHODS = ("rose", "vlora", "vora", "llava", "none")


class BaseLLM(InjectedGPTModel):
    """The base LLM with nothing injected (method "none"); visual inputs are ignored."""

    def __init__(self, config, vocab_size: int, max_sequence_length: int, **kwargs):
        super().__init__(config, [], vocab_size, max_sequence_length, **kwargs)

    def equip(self, layer_number, spec):  # never called: no layer is equipped
        return spec

    def make_generator(self):
        return None

    def forward(self, input_ids, position_ids, attention_mask=None, visual_features=None, labels=None, **kwargs):
        return self.language_model(input_ids, position_ids, attention_mask, labels=labels, **kwargs)


def resolve_preset(preset) -> dict:
    """A preset dict, a name under configs/model ('qwen2.5-7b-vora') or a path to a YAML file."""
    from megatron_ext.presets import CONFIG_DIR, load_preset

    if isinstance(preset, dict):
        return preset
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):  # 'qwen2.5-7b-vora' has a dot but is a name
        path = CONFIG_DIR / f"{preset}.yaml"
    return load_preset(str(path))


def build_model(preset, method: str | None = None, backend: str = "auto",
                dtype: torch.dtype = torch.float32, config_overrides: dict | None = None,
                **method_overrides) -> InjectedGPTModel:
    """The model of `method` for this process's TP/PP rank. Method settings come from the
    preset's section of that name (the papers' defaults where absent) plus `method_overrides`."""
    preset = resolve_preset(preset)
    if method is None:
        present = [m for m in METHODS[:-1] if m in preset]
        if len(present) != 1:
            raise ValueError(f"the preset has method sections {present}; pass method= one of {list(METHODS)}")
        method = present[0]
    if method == "rose":
        from megatron_ext.model import build_rose
        return build_rose(preset, backend, dtype, config_overrides, **method_overrides)
    if method == "vlora":
        from megatron_ext.vlora import build_vlora
        return build_vlora(preset, backend, dtype, config_overrides, **method_overrides)
    if method == "vora":
        from megatron_ext.vora import build_vora
        return build_vora(preset, backend, dtype, config_overrides, **method_overrides)
    if method == "llava":
        from megatron_ext.methods.llava.model import build_llava
        return build_llava(preset, backend, dtype, config_overrides, **method_overrides)
    if method == "none":
        from megatron_ext.llm_config import gpt_model_kwargs, preset_transformer_config

        config = preset_transformer_config(preset, dtype, config_overrides)
        return BaseLLM(config, backend=backend, **gpt_model_kwargs(preset["llm"]))
    raise ValueError(f"method={method!r}: choose one of {list(METHODS)}")
