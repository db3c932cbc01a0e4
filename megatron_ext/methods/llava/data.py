"""What a LLaVA batch holds: the image's pixels, and one placeholder per visual token before the
caption (the data layer's image_mask). The count is the tower's patch grid at its own resolution."""

from __future__ import annotations

from megatron_ext.hf.vision_tower import tower_config
from megatron_ext.methods.llava.config import LlavaConfig, LlavaConfigError


def image_tokens(path, image_size: int, llava: LlavaConfig | None = None) -> int:
    """Visual tokens per image for the tower at `path` on images of image_size pixels, checked
    against the projector's width (every rank runs it: a mismatch fails everywhere at start-up)."""
    vc = tower_config(path)
    if not getattr(vc, "any_image_size", False) and getattr(vc, "image_size", image_size) != image_size:
        raise LlavaConfigError(f"data.image_size={image_size} but the tower at {path} takes "
                               f"{vc.image_size}-pixel images (its position embedding): set data.image_size "
                               f"to {vc.image_size}")
    if image_size % vc.patch_size:
        raise LlavaConfigError(f"data.image_size={image_size} is not a multiple of the tower's "
                               f"{vc.patch_size}-pixel patch")
    if llava is not None and vc.hidden_size != llava.visual_dim:
        raise LlavaConfigError(f"the tower's width is {vc.hidden_size} but the projector takes "
                               f"{llava.visual_dim}: set the preset's vision.hidden_size to {vc.hidden_size}")
    if llava is not None and not -(vc.num_hidden_layers + 1) <= llava.feature_layer <= vc.num_hidden_layers:
        raise LlavaConfigError(f"llava.feature_layer={llava.feature_layer} but the tower has "
                               f"{vc.num_hidden_layers} blocks")
    return (image_size // vc.patch_size) ** 2  # a CLIP class token is dropped (vision_tower.py)
