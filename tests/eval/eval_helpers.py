"""Tiny exports straight from initialisation. ROSE's generator's last layer is zero, so every
rotation is the identity and the export is the base LLM, blind to its image (docs/ARCHITECTURE.md:
zero-init => identity at step 0); VLoRA's W_s starts at zero alike. Built once per test session;
needs megatron_single_process."""

import json
from pathlib import Path

import torch

IMAGE = 32


def write_blind_export(out: Path, method: str = "rose") -> Path:
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig

    from megatron_ext.export.folder import export_model
    from megatron_ext.methods import build_model, resolve_preset
    from megatron_ext.hf.vision_tower import VisionTower
    from megatron_ext.core.vlm import VisionLanguageModel
    from recaption.tiny import build_tokenizer

    preset = json.loads(json.dumps(resolve_preset({"rose": "tiny", "vlora": "tiny-vlora"}[method])))
    preset["llm"]["vocab_size"] = 151680  # the real Qwen2.5 vocabulary, padded to a multiple of 128
    torch.manual_seed(0)
    lm = build_model(preset, method=method, backend="local")
    # hidden_size: the preset's vision width, which the generator reads
    tower = VisionTower.from_config(SiglipVisionConfig(
        hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE, patch_size=16), feature_layer=-1)
    vlm = VisionLanguageModel(lm, tower, lm.all_equipped, train_vision=False)
    export_model(vlm, preset["llm"], out, build_tokenizer(),
                 SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}))
    return out
