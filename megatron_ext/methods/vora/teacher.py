"""VoRA's distillation teacher: a frozen ViT whose block i gives LLM block i its targets."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn

from megatron_ext.hf.vision_tower import MEAN, STD, VisionTower, tower_pixel_stats
from megatron_ext.methods.vora.config import VoRAConfig, VoRAConfigError
from megatron_ext.methods.vora.vora_embedding import VisionEmbedding


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


@torch.no_grad()
def embedding_from_teacher(embedding: VisionEmbedding, teacher: VoRATeacher) -> None:
    """vora.embedding_from_teacher, the released config's `reuse_aux_vision_embedding_layers:
    preprocessor`: the patch linear, its RMSNorm and the learned positions start as the AIMv2
    teacher's patch embedding. The student sees the loader's pixels x where the teacher sees
    x * scale + shift per channel (its own statistics), so the linear absorbs the difference:
    W' = W diag(scale), b' = b + W shift, and both give the same embeddings. The projection to the
    LLM width has no counterpart in the teacher and keeps its initialisation."""
    src = getattr(teacher.tower.model, "embeddings", None)
    if not all(hasattr(src, n) for n in ("patch_embed", "rms_norm", "position_embedding")):
        raise VoRAConfigError(
            f"vora.embedding_from_teacher copies an AIMv2 teacher's patch embedding (patch linear, RMSNorm, "
            f"learned positions), which {type(teacher.tower.model).__name__} does not have: use an AIMv2 "
            f"teacher or set vora.embedding_from_teacher: false")
    W = src.patch_embed.weight.flatten(1).float()  # (width, C * p * p), F.unfold's column order
    patch = src.patch_embed.kernel_size[0]
    if W.shape != embedding.patch.weight.shape or patch != embedding.patch_size:
        raise VoRAConfigError(
            f"vora.embedding_from_teacher: the teacher's patch embedding is {tuple(W.shape)} with {patch}-px "
            f"patches, the student's {tuple(embedding.patch.weight.shape)} with {embedding.patch_size}-px: set "
            f"vora.embed_width to {W.shape[0]} and vora.patch_size to {patch}")
    pos = src.position_embedding.weight
    if pos.shape[0] != embedding.grid ** 2:
        raise VoRAConfigError(f"vora.embedding_from_teacher: the teacher has {pos.shape[0]} positions, the "
                              f"student {embedding.grid ** 2}: set vora.image_size to the teacher's")
    per_column = embedding.patch_size ** 2  # each channel's p x p columns
    scale = teacher.scale.flatten().repeat_interleave(per_column)
    shift = teacher.shift.flatten().repeat_interleave(per_column)
    embedding.patch.weight.copy_(W * scale)
    embedding.patch.bias.copy_(src.patch_embed.bias.float() + W @ shift)
    embedding.norm.weight.copy_(src.rms_norm.weight)
    embedding.pos.copy_(pos.view(embedding.grid, embedding.grid, -1))
