"""LLaVA: the input-space baseline every parameter-space claim is measured against.

A vision tower's features (SigLIP/CLIP, model.vision_weights) pass LLaVA-1.5's 2-layer GELU projector
and are spliced into the sequence before the caption; the loss falls on the caption only. Stages:
S1 the projector, S2 + the vision tower, S3 everything. Exported natively as transformers'
LlavaForConditionalGeneration (no remote code).

    python -m megatron_ext.train --config configs/train/llava/s1-tiny.yaml \\
        data.manifest=<shards>/manifest.json model.vision_weights=<siglip dir>
    python -m megatron_ext.export --checkpoint runs/llava-s2-tiny --out hf/ --tokenizer <qwen2.5 dir>
"""
