"""VLoRA: per-image perceptual low-rank weights on the LLM's projections (docs/ARCHITECTURE.md)."""

from megatron_ext.methods.spec import MethodSpec
from megatron_ext.presets import vlora_config
from megatron_ext.vlora import build_vlora

SPEC = MethodSpec(
    name="vlora", config=vlora_config, build=build_vlora,
    # pre-training trains the generator (with its W_s), fine-tuning adds the LLM
    stages={"s1": ("generator",), "s2": ("generator", "llm")},
    inputs="features")
