"""VLoRA: per-image perceptual low-rank weights on the LLM's projections (docs/ARCHITECTURE.md)."""

from megatron_ext.methods.spec import MethodSpec
from megatron_ext.methods.vlora.config import VLoRAConfig, VLoRAConfigError, vlora_config
from megatron_ext.methods.vlora.export import vlora_export
from megatron_ext.methods.vlora.flops import vlora_flops
from megatron_ext.methods.vlora.model import VLoRAModel, build_vlora

SPEC = MethodSpec(
    name="vlora", config=vlora_config, build=build_vlora,
    # pre-training trains the generator (with its W_s), fine-tuning adds the LLM
    stages={"s1": ("generator",), "s2": ("generator", "llm")},
    inputs="features", flops=vlora_flops, export=vlora_export)

__all__ = ["SPEC", "VLoRAConfig", "VLoRAConfigError", "VLoRAModel", "build_vlora", "vlora_config"]
