"""VLoRA settings and their start-up validation (what the weight types mean: model.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from megatron_ext.core.projections import PROJECTION, PROJECTIONS

WEIGHT_TYPES = PROJECTIONS[:4] + ("mlp",) + PROJECTIONS[4:]   # q, k, v, o, mlp, gate, up, down
_PARTS_OF_TYPE = {"mlp": ("gate", "up")}


class VLoRAConfigError(ValueError):
    """A VLoRA setting that cannot work with the model; the message says what to change."""


@dataclass
class VLoRAConfig:
    visual_dim: int
    layers: Optional[Sequence[int]] = None   # 1-based; None = every `every`-th block
    every: int = 4
    weight_types: Sequence[str] = ("q", "k", "v", "o", "mlp")
    rank: int = 64
    alpha: Optional[float] = None            # branch scale alpha / rank; None = 1 (the paper)
    generator_width: int = 512               # h_p
    generator_depth: int = 8                 # N
    generator_heads: int = 8
    generator_mlp_ratio: int = 4

    def equipped_layers(self, num_layers: int) -> list[int]:
        if self.layers is not None:
            return sorted(set(int(l) for l in self.layers))
        return [l for l in range(1, num_layers + 1) if l % self.every == 0]

    def parts(self) -> dict[str, str]:
        """Megatron projection part -> the weight type (generator) whose W_v it uses."""
        return {p: t for t in self.weight_types for p in _PARTS_OF_TYPE.get(t, (t,))}

    def input_dims(self, tcfg) -> dict[str, int]:
        """Rows of each type's W_v: its projections' input size (mlp's gate and up share h)."""
        return {t: PROJECTION[_PARTS_OF_TYPE.get(t, (t,))[0]].in_size(tcfg) for t in self.weight_types}

    def validate(self, tcfg) -> None:
        bad = [t for t in self.weight_types if t not in WEIGHT_TYPES]
        if bad or not self.weight_types:
            raise VLoRAConfigError(f"vlora.weight_types={list(self.weight_types)}: each must be one of "
                                   f"{list(WEIGHT_TYPES)}, at least one")
        parts = [p for t in self.weight_types for p in _PARTS_OF_TYPE.get(t, (t,))]
        if len(parts) != len(set(parts)):
            raise VLoRAConfigError(f"vlora.weight_types={list(self.weight_types)} names a projection twice "
                                   "('mlp' already covers gate and up)")
        if ("gate" in parts) and not tcfg.gated_linear_unit:
            raise VLoRAConfigError("'mlp'/'gate' need a gated FFN (gated_linear_unit=True); use 'up'")
        layers = self.equipped_layers(tcfg.num_layers)
        if not layers or any(not 1 <= l <= tcfg.num_layers for l in layers):
            raise VLoRAConfigError(f"vlora equips layers {layers}; they must be a non-empty subset of "
                                   f"1..{tcfg.num_layers} (set vlora.layers or vlora.every)")
        if self.rank < 1:
            raise VLoRAConfigError(f"vlora.rank={self.rank} must be positive")
        if self.generator_width % self.generator_heads:
            raise VLoRAConfigError(f"vlora.generator_width={self.generator_width} is not divisible by "
                                   f"vlora.generator_heads={self.generator_heads}")
        if tcfg.sequence_parallel:
            raise VLoRAConfigError("VLoRA does not support sequence_parallel yet; set it to False")


def vlora_config(preset: dict, **overrides) -> VLoRAConfig:
    """VLoRA settings of a preset (its `vlora:` section) with the vision width."""
    kwargs = dict(preset.get("vlora", {}))
    kwargs.update(overrides)
    return VLoRAConfig(visual_dim=preset["vision"]["hidden_size"], **kwargs)
