"""VoRA: vision as a static LoRA on the first blocks, raw patches in the sequence, block-wise
distillation from a frozen ViT, merged after pre-training (docs/ARCHITECTURE.md)."""

from megatron_ext.methods.spec import MethodSpec
from megatron_ext.presets import vora_config
from megatron_ext.vora import build_vora

SPEC = MethodSpec(
    name="vora", config=vora_config, build=build_vora,
    # LoRA + vision embedding (+ the distillation heads), then the merged LLM + embedding
    stages={"s1": ("lora", "embedding", "aux"), "s2": ("llm", "embedding")},
    inputs="pixels")
