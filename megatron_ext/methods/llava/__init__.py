"""LLaVA: the input-space baseline every parameter-space claim is measured against.

A vision tower's features (SigLIP/CLIP, model.vision_weights) pass LLaVA-1.5's 2-layer GELU projector
and are spliced into the sequence before the caption; the loss falls on the caption only. Stages:
S1 the projector, S2 + the vision tower, S3 everything. Exported natively as transformers'
LlavaForConditionalGeneration (no remote code), or, with a tower transformers lacks
(EfficientNet-Lite), as the project's remote-code folder.

    python -m megatron_ext.train --config configs/train/llava/s1-tiny.yaml \\
        data.manifest=<shards>/manifest.json model.vision_weights=<siglip dir>
    python -m megatron_ext.export --checkpoint runs/llava-s2-tiny --out hf/ --tokenizer <qwen2.5 dir>
"""

from megatron_ext.methods.llava.config import STAGES, LlavaConfig, LlavaConfigError, llava_config
from megatron_ext.methods.llava.export import export_llava, llava_export
from megatron_ext.methods.llava.flops import llava_flops
from megatron_ext.methods.llava.model import LlavaLM, LlavaVisionModel, build_llava
from megatron_ext.methods.llava.training import check, image_tokens, training_model
from megatron_ext.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="llava", config=llava_config, build=build_llava, stages=STAGES,
    # the tower's features, projected into the sequence: image tokens are sequence positions
    inputs="features", visual_tokens_in_sequence=True, image_tokens=image_tokens, flops=llava_flops,
    training_model=training_model, check=check, export_native=export_llava, export=llava_export)

__all__ = ["LlavaConfig", "LlavaConfigError", "LlavaLM", "LlavaVisionModel", "SPEC", "build_llava",
           "llava_config"]
