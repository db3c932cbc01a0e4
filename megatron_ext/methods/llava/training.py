"""LLaVA in the train CLI: the start-up checks, the image tokens of a batch and the model the loop
runs (the LLM with its projector, wrapped with the vision tower on the first pipeline stage)."""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from megatron_ext.hf.vision_tower import VisionTower
from megatron_ext.methods.llava.config import LlavaConfigError, llava_config
from megatron_ext.methods.llava.data import image_tokens as tower_tokens
from megatron_ext.methods.llava.model import LlavaVisionModel, build_llava
from pvcommon.errors import ConfigError


def image_tokens(cfg, preset: dict) -> int:
    """Visual tokens per image in the sequence: the tower's patch grid at data.image_size."""
    if not cfg.model.vision_weights:
        raise LlavaConfigError("LLaVA encodes its images with a vision tower: set model.vision_weights to a "
                               "local SigLIP/CLIP directory")
    return tower_tokens(cfg.model.vision_weights, cfg.data.image_size, llava_config(preset))


def check(cfg, preset: dict, trainable: list) -> None:
    """Refuse, before anything is built, what LLaVA cannot train with (one line each)."""
    if cfg.data.kind == "synthetic":
        raise ConfigError("LLaVA puts the visual tokens in the sequence, which synthetic feature pairs do "
                          "not lay out (no image placeholders): use data.kind=webdataset|dali with "
                          "model.vision_weights")
    try:
        image_tokens(cfg, preset)
    except LlavaConfigError as e:
        raise ConfigError(str(e)) from None
    except FileNotFoundError as e:  # model.vision_weights names no encoder directory
        raise ConfigError(f"model.vision_weights: {e}") from None


def training_model(cfg, preset: dict, dtype, config_overrides: dict | None, trainable: list):
    """The LLM with its projector, and the vision tower (model.vision_weights) on the first
    pipeline stage; the tower trains when the stage's trainable set names "vision"."""
    lm = build_llava(preset, cfg.model.backend, dtype, config_overrides)

    tower = None
    if parallel_state.is_pipeline_first_stage():
        tower = VisionTower.from_pretrained(cfg.model.vision_weights, feature_layer=lm.llava.feature_layer,
                                            dtype=dtype)
        if torch.cuda.is_available():
            tower = tower.to(torch.cuda.current_device())
    return LlavaVisionModel(lm, tower, train_vision="vision" in trainable)
