"""LLaVA settings (a preset's `llava:` section) and the stages of the input-space baseline."""

from __future__ import annotations

from dataclasses import dataclass


class LlavaConfigError(ValueError):
    """A LLaVA setting that cannot work with the model; the message says what to change."""


# LLaVA-1.5's recipe: S1 aligns the projector alone; S2 also trains the vision encoder; S3 everything
STAGES = {"s1": ["projector"], "s2": ["projector", "vision"], "s3": ["projector", "vision", "llm"]}


@dataclass
class LlavaConfig:
    visual_dim: int                 # width of the vision tower's features (preset vision.hidden_size)
    feature_layer: int = -2         # hidden_states index the projector reads (LLaVA-1.5: penultimate)
    projector_bias: bool = True     # LLaVA-1.5's mlp2x_gelu has biases

    def validate(self, tcfg) -> None:
        if self.visual_dim < 1:
            raise LlavaConfigError(f"vision.hidden_size={self.visual_dim} must be positive")
        if tcfg.sequence_parallel:
            # the splice writes whole sequences; under sequence parallelism each rank holds a slice
            raise LlavaConfigError("LLaVA does not support sequence_parallel yet; set it to False")


def llava_config(preset: dict, **overrides) -> LlavaConfig:
    kwargs = dict(preset.get("llava") or {})
    kwargs.update(overrides)
    unknown = set(kwargs) - {"feature_layer", "projector_bias"}
    if unknown:
        raise LlavaConfigError(f"llava: unknown key(s) {sorted(unknown)}; known: feature_layer, projector_bias")
    return LlavaConfig(visual_dim=preset["vision"]["hidden_size"], **kwargs)
