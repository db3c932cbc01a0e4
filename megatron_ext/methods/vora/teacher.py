"""VoRA's distillation teacher: a frozen ViT whose block i gives LLM block i its targets."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn

from megatron_ext.data.shards import MEAN, STD, tower_pixel_stats
from megatron_ext.methods.vora.config import VoRAConfig, VoRAConfigError
from megatron_ext.vision_tower import VisionTower


def teacher_check(path, vora: VoRAConfig, image_size: int):
    """The teacher's HF config, checked against the student before any weights are read (every
    rank runs it, so a mismatch fails everywhere at start-up, not as a hang)."""
    if not (Path(path) / "config.json").is_file():
        raise VoRAConfigError(f"teacher directory {path} has no config.json")
    config = transformers.AutoConfig.from_pretrained(path)
    vc = getattr(config, "vision_config", config)
    deepest = max(vora.distilled())
    if vc.num_hidden_layers < deepest:
        raise VoRAConfigError(f"the teacher has {vc.num_hidden_layers} blocks but block {deepest} is "
                              f"distilled (LLM block i learns from teacher block i): lower vora.vit_layers")
    if vc.hidden_size != vora.teacher_dim:
        raise VoRAConfigError(f"the teacher's width is {vc.hidden_size} but the aux heads project to "
                              f"{vora.teacher_dim}: set the preset's vision.hidden_size to {vc.hidden_size}")
    teacher_grid, ours = image_size // vc.patch_size, image_size // vora.patch_size
    if getattr(vc, "image_size", image_size) != image_size or teacher_grid != ours:
        raise VoRAConfigError(
            f"at data.image_size={image_size} the student has {ours}x{ours} patches of {vora.patch_size} px "
            f"but the teacher (image_size {getattr(vc, 'image_size', '?')}, patch {vc.patch_size}) has "
            f"{teacher_grid}x{teacher_grid}: distillation pairs them token by token; set data.image_size "
            f"to the teacher's and vora.patch_size to its patch size")
    return vc


class VoRATeacher(nn.Module):
    """A frozen ViT: block i's hidden states are the targets of LLM block i. Never trained (runs
    under no_grad). The loader normalises pixels for the student (mean = std = 0.5); the teacher
    gets them re-normalised to its own image processor's statistics when its directory has one."""

    def __init__(self, tower, layers: list[int], mean=None, std=None):
        super().__init__()
        tower.set_trainable(False)
        self.tower, self.layers = tower, list(layers)
        mean = torch.tensor(mean if mean is not None else MEAN).view(1, -1, 1, 1)
        std = torch.tensor(std if std is not None else STD).view(1, -1, 1, 1)
        # x_teacher = (x * STD + MEAN - mean) / std, as one multiply-add
        self.register_buffer("scale", torch.tensor(STD).view(1, -1, 1, 1) / std, persistent=False)
        self.register_buffer("shift", (torch.tensor(MEAN).view(1, -1, 1, 1) - mean) / std, persistent=False)

    @classmethod
    def from_pretrained(cls, path, vora: VoRAConfig, image_size: int, dtype=torch.float32) -> "VoRATeacher":
        teacher_check(path, vora, image_size)
        layers = vora.distilled()
        tower = VisionTower.from_pretrained(path, feature_layer=max(layers), dtype=dtype)
        teacher = cls(tower, layers, *tower_pixel_stats(path))
        return teacher.to(torch.cuda.current_device()) if torch.cuda.is_available() else teacher

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> dict:
        """{block: (images * tokens, width)} in image-major order (the student's token order)."""
        x = pixel_values.float() * self.scale + self.shift
        x = x.to(next(self.tower.parameters()).dtype)  # bf16 teacher on GPU, fp32 loader pixels
        feats = self.tower.features(x, self.layers)
        return {l: f.flatten(0, 1) for l, f in zip(self.layers, feats)}
