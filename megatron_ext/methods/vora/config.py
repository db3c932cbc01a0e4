"""VoRA settings and their start-up validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


class VoRAConfigError(ValueError):
    """A VoRA setting that cannot work with the model; the message says what to change."""


@dataclass
class VoRAConfig:
    teacher_dim: int                          # width of the ViT teacher's block features
    vit_layers: int = 24                      # N_vit: LoRA on blocks 1..N_vit
    rank: int = 1024
    alpha: Optional[float] = None             # LoRA scale alpha / rank; None = 1
    distill_layers: Optional[Sequence[int]] = None  # None = 1..N_vit (block-wise); [N_vit] = last-block
    patch_size: int = 14
    image_size: int = 448                     # the positional embedding's native grid
    embed_width: int = 1536
    in_channels: int = 3
    bidirectional: bool = True                # False: causal image attention (the paper's ablation)

    def embedding(self) -> dict:
        """The vision embedding's settings (VisionEmbedding's arguments; an export's config.json)."""
        return dict(patch_size=self.patch_size, image_size=self.image_size,
                    embed_width=self.embed_width, in_channels=self.in_channels)

    def distilled(self) -> list[int]:
        return sorted(self.distill_layers) if self.distill_layers is not None \
            else list(range(1, self.vit_layers + 1))

    def validate(self, tcfg) -> None:
        if not 1 <= self.vit_layers <= tcfg.num_layers:
            raise VoRAConfigError(f"vora.vit_layers={self.vit_layers} must be in 1..{tcfg.num_layers}")
        bad = [l for l in self.distilled() if not 1 <= l <= tcfg.num_layers]
        if bad:
            raise VoRAConfigError(f"vora.distill_layers contains {bad}: layers are numbered 1..{tcfg.num_layers}")
        if self.image_size % self.patch_size:
            raise VoRAConfigError(f"vora.image_size={self.image_size} is not a multiple of "
                                  f"vora.patch_size={self.patch_size}")
        if self.rank < 1:
            raise VoRAConfigError(f"vora.rank={self.rank} must be positive")
        if tcfg.sequence_parallel:
            raise VoRAConfigError("VoRA does not support sequence_parallel yet; set it to False")


def vora_config(preset: dict, **overrides) -> VoRAConfig:
    """VoRA settings of a preset (its `vora:` section); the teacher width comes from `vision`."""
    kwargs = dict(preset.get("vora", {}))
    kwargs.update(overrides)
    kwargs.setdefault("teacher_dim", preset["vision"]["hidden_size"])
    return VoRAConfig(**kwargs)
