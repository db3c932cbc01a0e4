"""ROSE configuration and its start-up validation (docs/ARCHITECTURE.md, rule 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from megatron_ext.core.layer_choice import chosen_layers
from megatron_ext.core.projections import PROJECTIONS, input_sizes


class RoseConfigError(ValueError):
    """A ROSE setting that cannot work with the model or parallel layout; the message says what to change."""


@dataclass
class RoseConfig:
    """What the VRMG rotates and how it is built.

    layers: 1-based decoder layer numbers to equip; None means every `every`-th layer
        (every=4 on a 28-layer model equips 4, 8, ..., 28).
    projections: any subset of q, k, v, o, gate, up, down.
    blocks: diagonal blocks per rotation (64 in the paper); each projection's input dimension
        is split into `blocks` blocks of equal size.
    """

    visual_dim: int
    layers: Optional[Sequence[int]] = None
    every: int = 4
    projections: Sequence[str] = PROJECTIONS
    blocks: int = 64
    generator_width: int = 512
    generator_heads: int = 8
    # stability: the scale of the rotation head's output, T = t_scale * to_T(h) (vrmg.py). 1.0 is
    # the paper's generator; smaller values slow how fast Adam grows the rotations
    t_scale: float = 1.0

    def equipped_layers(self, num_layers: int) -> list[int]:
        return chosen_layers(self.layers, self.every, num_layers)

    def projection_input_dims(self, tcfg) -> dict[str, int]:
        """Input dimension d of each projection W in R^{d x n} (the dimension R rotates)."""
        return input_sizes(tcfg, self.projections)

    def block_sizes(self, tcfg) -> dict[str, int]:
        return {p: d // self.blocks for p, d in self.projection_input_dims(tcfg).items()}

    def validate(self, tcfg) -> None:
        """Fail at start-up, naming the number to change, instead of deep inside a forward pass."""
        unknown = [p for p in self.projections if p not in PROJECTIONS]
        if unknown or not self.projections:
            raise RoseConfigError(f"rose.projections={list(self.projections)}: each must be one of "
                                  f"{list(PROJECTIONS)} and at least one is needed")
        if self.blocks < 1:
            raise RoseConfigError(f"rose.blocks={self.blocks} must be a positive integer")
        for p, d in self.projection_input_dims(tcfg).items():
            if d % self.blocks:
                raise RoseConfigError(
                    f"rose.blocks={self.blocks} does not divide the input dimension {d} of projection "
                    f"'{p}': set rose.blocks to a divisor of {d}")
            if d // self.blocks < 2:
                raise RoseConfigError(f"rose.blocks={self.blocks} leaves blocks of size {d // self.blocks} "
                                      f"for projection '{p}'; a rotation block needs at least 2 dimensions")
        tp = tcfg.tensor_model_parallel_size
        if self.blocks % tp:
            raise RoseConfigError(
                f"rose.blocks={self.blocks} is not divisible by tensor_model_parallel_size={tp}: each TP "
                f"rank rotates whole blocks of its shard of o/down; set rose.blocks to a multiple of {tp} "
                f"or change tensor_model_parallel_size")
        if "gate" in self.projections and not tcfg.gated_linear_unit:
            raise RoseConfigError("rose.projections names 'gate' but the model's MLP is not gated "
                                  "(gated_linear_unit=False): its fc1 is 'up' alone")
        layers = self.equipped_layers(tcfg.num_layers)
        bad = [l for l in layers if not 1 <= l <= tcfg.num_layers]
        if bad:
            raise RoseConfigError(f"rose.layers={list(layers)} contains {bad}: layers are numbered "
                                  f"1..{tcfg.num_layers}")
        if not layers:
            raise RoseConfigError(f"no layer is equipped: rose.every={self.every} with num_layers="
                                  f"{tcfg.num_layers}; set rose.layers or a smaller rose.every")
        if not self.t_scale > 0:
            raise RoseConfigError(f"rose.t_scale={self.t_scale} must be positive (1.0: the paper's generator)")
        if self.generator_width % self.generator_heads:
            raise RoseConfigError(f"rose.generator_width={self.generator_width} is not divisible by "
                                  f"rose.generator_heads={self.generator_heads}")


def rose_config(preset: dict, **overrides) -> RoseConfig:
    """ROSE settings of a preset (its `rose:` section) with the vision width."""
    kwargs = dict(preset.get("rose", {}))
    kwargs.update(overrides)
    return RoseConfig(visual_dim=preset["vision"]["hidden_size"], **kwargs)
