"""VoRA in the training loop: its checks, its training model and S2's start from S1."""

from __future__ import annotations

import logging

import torch
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps

from megatron_ext.core.weights import load_weights
from megatron_ext.methods.vora.config import VoRAConfigError, vora_config
from megatron_ext.methods.vora.model import build_vora
from megatron_ext.methods.vora.teacher import VoRATeacher, embedding_from_teacher, teacher_check
from megatron_ext.methods.vora.vision import VoRAVisionModel
from pvcommon.errors import ConfigError

log = logging.getLogger(__name__)

# the stage that trains neither LoRA nor aux heads runs the merged model
_UNMERGED_GROUPS = {"lora", "aux"}


def is_merged(trainable) -> bool:
    """A VoRA stage that trains neither LoRA nor aux heads (S2) runs the merged model."""
    return not _UNMERGED_GROUPS & set(trainable)


def image_tokens(cfg, preset: dict) -> int:
    """Tokens each image takes in the sequence: its patches at data.image_size."""
    p = vora_config(preset).patch_size
    if cfg.data.image_size % p:
        raise ValueError(f"data.image_size={cfg.data.image_size} is not a multiple of VoRA's "
                         f"{p}-pixel patch (the preset's vora.patch_size)")
    return (cfg.data.image_size // p) ** 2


def check(cfg, preset: dict, trainable: list) -> None:
    if cfg.data.kind == "synthetic":
        raise ConfigError("VoRA embeds the image's pixels in the sequence; precomputed features "
                          "(data.kind=synthetic) cannot train it: use data.kind=webdataset|dali")
    if "teacher" in trainable:
        raise ConfigError("train.trainable: VoRA's teacher is frozen by design (the distillation target)")
    try:
        image_tokens(cfg, preset)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    vora = vora_config(preset)
    if is_merged(trainable):
        return
    if vora.distilled() and not cfg.model.vision_weights:
        raise ConfigError("VoRA pre-training distils its blocks from a ViT teacher: set "
                          "model.vision_weights to a local AIMv2 (or SigLIP/CLIP) directory, or "
                          "drop distillation with the preset's vora.distill_layers: []")
    if vora.embedding_from_teacher and not vora.distilled():
        raise ConfigError("vora.embedding_from_teacher starts the patch embedding from the distillation "
                          "teacher, but vora.distill_layers is empty: distil, or set it false")


def training_model(cfg, preset: dict, dtype: torch.dtype, config_overrides: dict | None,
                   trainable: list, merged: bool | None = None, with_teacher: bool = True):
    """VoRA for this rank: pre-training (LoRA + aux heads) or the merged model (S2). On images, the
    VoRAVisionModel wrapper; while distilling, the teacher (model.vision_weights) on stage 0."""
    merged = is_merged(trainable) if merged is None else merged
    lm = build_vora(preset, cfg.model.backend, dtype, config_overrides, merged=merged)
    if cfg.data.kind == "synthetic":
        return lm  # (check() refuses to train it: VoRA needs pixels)
    distill = with_teacher and not merged and bool(lm.vora.distilled()) and bool(cfg.model.vision_weights)
    teacher = None
    if distill:
        try:
            teacher_check(cfg.model.vision_weights, lm.vora, cfg.data.image_size)  # every rank
            if ps.is_pipeline_first_stage():
                teacher = VoRATeacher.from_pretrained(cfg.model.vision_weights, lm.vora,
                                                      cfg.data.image_size, dtype)
                if lm.vora.embedding_from_teacher:  # a checkpoint loaded later replaces it
                    embedding_from_teacher(lm.vision_embedding, teacher)
        except VoRAConfigError as e:
            raise ConfigError(f"model.vision_weights={cfg.model.vision_weights} (VoRA's teacher): {e}") from None
    return VoRAVisionModel(lm, teacher, distill)


def checkpoint_has_lora(path) -> bool:
    return any(".lora_" in k for k in dist_checkpointing.load_tensors_metadata(str(path)))


def load_merged(path, model, build_unmerged) -> dict:
    """Fine-tuning from pre-training: the checkpoint's weights (LoRA unmerged, aux heads) go into
    an unmerged model of this rank's layout, the LoRA is folded into the base weights there (each
    TP rank folds its own shards), and the result fills the merged `model` (strictly: every
    tensor accounted for). The aux heads are dropped, as in the paper."""
    src = build_unmerged()
    info = load_weights(path, src)
    if info["kept_at_init"]:
        raise RuntimeError(f"{path} lacks {info['kept_at_init'][:3]}... of the pre-training model")
    src.lm.merge_and_unload()
    model.load_state_dict(src.state_dict(), strict=True)
    return info


def init_from(checkpoint, model, cfg, preset: dict, dtype: torch.dtype, config_overrides: dict | None) -> dict:
    """S2 from S1: the LoRA folded into the base weights, the aux heads dropped; otherwise as is."""
    if not (model.lm.merged and checkpoint_has_lora(checkpoint)):
        return load_weights(checkpoint, model)
    info = load_merged(checkpoint, model, lambda: training_model(
        cfg, preset, dtype, config_overrides, [], merged=False, with_teacher=False))
    if torch.distributed.get_rank() == 0:
        log.info("init_from %s: pre-training LoRA merged into the base weights", checkpoint)
    return info
