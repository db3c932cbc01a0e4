"""VoRA: vision as a static LoRA on the first blocks, raw patches in the sequence, block-wise
distillation from a frozen ViT, merged after pre-training (docs/ARCHITECTURE.md)."""

from megatron_ext.hf.vision_tower import MEAN, STD
from megatron_ext.methods.spec import MethodSpec
from megatron_ext.methods.vora import training
from megatron_ext.methods.vora.config import VoRAConfig, VoRAConfigError, vora_config
from megatron_ext.methods.vora.export import merge, vora_export
from megatron_ext.methods.vora.flops import vora_flops
from megatron_ext.methods.vora.model import VoRAModel, build_vora, vora_attention_mask
from megatron_ext.methods.vora.teacher import VoRATeacher, teacher_check
from megatron_ext.methods.vora.vision import VoRAVisionModel
from megatron_ext.methods.vora.vora_embedding import VisionEmbedding

SPEC = MethodSpec(
    name="vora", config=vora_config, build=build_vora,
    # LoRA + vision embedding (+ the distillation heads), then the merged LLM + embedding
    stages={"s1": ("lora", "embedding", "aux"), "s2": ("llm", "embedding")},
    inputs="pixels", visual_tokens_in_sequence=True, image_tokens=training.image_tokens,
    # the pixels feed VoRA's own patch embedding (its teacher re-normalises): 0.5
    pixel_stats=lambda cfg: (MEAN, STD),
    flops=vora_flops, training_model=training.training_model, check=training.check,
    init_from=training.init_from, export=vora_export, merge=merge)

__all__ = ["SPEC", "VisionEmbedding", "VoRAConfig", "VoRAConfigError", "VoRAModel", "VoRATeacher",
           "VoRAVisionModel", "build_vora", "teacher_check", "vora_attention_mask", "vora_config"]
