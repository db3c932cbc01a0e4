"""The checkpoints the main job starts from, built locally (no downloads): the real Qwen2.5
tokenizer, the tiny random Qwen2.5-VL captioner, and a tiny random vision encoder per kind.

A real run points the same configs at real directories (Qwen2.5-VL-7B, SigLIP2, CLIP, AIMv2);
the code paths are the ones these tiny checkpoints take."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("mainjob.assets")

# tower width = the presets' vision.hidden_size (configs/model/tiny*.yaml)
_TOWER = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, patch_size=8)


def _done(path: Path) -> bool:
    return (path / ".complete").is_file()


def _mark(path: Path) -> Path:
    (path / ".complete").write_text("")
    return path


def tokenizer(root: Path) -> Path:
    from recaption.tiny import build_tokenizer

    path = root / "qwen2.5-tokenizer"
    if not _done(path):
        build_tokenizer().save_pretrained(path)
        _mark(path)
    return path


def captioner(root: Path) -> Path:
    from recaption.tiny import build_tiny_captioner

    path = root / "tiny-qwen2.5-vl"
    if not _done(path):
        build_tiny_captioner(str(path))
        _mark(path)
    return path


def vision_tower(root: Path, kind: str, image_size: int) -> Path:
    """A tiny random encoder of `kind` with the image processor the training loaders match:
    resize to image_size, mean = std = 0.5 (megatron_ext/data/shards.py)."""
    import torch
    import transformers
    from transformers import SiglipImageProcessorPil

    classes = {"siglip": ("SiglipVisionConfig", "SiglipVisionModel"),
               "clip": ("CLIPVisionConfig", "CLIPVisionModel"),
               "aimv2": ("Aimv2VisionConfig", "Aimv2VisionModel")}
    if kind not in classes:
        raise ValueError(f"unknown vision tower kind {kind!r}; known: {sorted(classes)}")
    path = root / f"tiny-{kind}-{image_size}"
    if not _done(path):
        config_cls, model_cls = (getattr(transformers, n) for n in classes[kind])
        torch.manual_seed(0)
        model_cls(config_cls(image_size=image_size, **_TOWER)).save_pretrained(path)
        SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(path)
        _mark(path)
    return path
