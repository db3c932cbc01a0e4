"""Vision encoders from Hugging Face checkpoints on local disk (SigLIP/SigLIP2 for ROSE, CLIP for
VLoRA, AIMv2 as VoRA's teacher, EfficientNet-Lite0: real ImageNet weights that install offline,
megatron_ext/hf/efficientnet.py), returning the hidden states of a chosen layer."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# config.model_type -> the transformers class of the vision tower alone
_TOWERS = {"siglip_vision_model": "SiglipVisionModel", "siglip": "SiglipVisionModel",
           "siglip2_vision_model": "Siglip2VisionModel", "siglip2": "Siglip2VisionModel",
           "clip_vision_model": "CLIPVisionModel", "clip": "CLIPVisionModel",
           "aimv2_vision_model": "Aimv2VisionModel", "aimv2": "Aimv2VisionModel"}
_OWN = {"efficientnet_lite": "megatron_ext.hf.efficientnet:EfficientNetLite"}  # not in transformers

# SigLIP/CLIP-style normalisation; a vision tower with other statistics passes its own
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def tower_pixel_stats(tower_dir) -> tuple[tuple, tuple]:
    """(mean, std) of a vision tower's image processor (its directory's preprocessor_config.json);
    mean = std = 0.5 where it has none."""
    path = Path(tower_dir) / "preprocessor_config.json"
    stats = json.loads(path.read_text()) if path.is_file() else {}
    return tuple(stats.get("image_mean", MEAN)), tuple(stats.get("image_std", STD))


class VisionTower(nn.Module):
    """Wraps a transformers vision model; forward(**processor_outputs) -> (batch, tokens, width).

    feature_layer indexes `hidden_states` (0 = patch embeddings, -1 = last block, -2 = the
    LLaVA choice); CLIP's class token is dropped so every token is a patch.
    """

    def __init__(self, model: nn.Module, feature_layer: int = -1):
        super().__init__()
        self.model = model
        self.feature_layer = feature_layer
        n = model.config.num_hidden_layers
        if not -(n + 1) <= feature_layer <= n:
            raise ValueError(f"feature_layer={feature_layer} but the encoder has {n} blocks "
                             f"(valid: {-(n + 1)}..{n})")
        self.drop_cls = model.config.model_type.startswith("clip")
        # blocks after the feature layer, the final norm and pooling heads never reach the features:
        # they stay frozen so optimizers and gradient buffers do not carry them
        used = feature_layer if feature_layer >= 0 else n + 1 + feature_layer
        classifier = tuple(getattr(model, "classifier_prefixes", ()))  # e.g. an ImageNet head
        self.unused = {name for name, _ in model.named_parameters()
                       if _unused(name, used) or (classifier and name.startswith(classifier))}
        for name, p in model.named_parameters():
            if name in self.unused:
                p.requires_grad_(False)

    def set_trainable(self, trainable: bool) -> None:
        for name, p in self.model.named_parameters():
            p.requires_grad_(trainable and name not in self.unused)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @classmethod
    def from_pretrained(cls, path: str | Path, feature_layer: int = -1, dtype=torch.float32) -> "VisionTower":
        import transformers

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"vision encoder directory {path} has no config.json")
        own = _OWN.get(json.loads((path / "config.json").read_text()).get("model_type"))
        if own:
            model = _own_class(own).from_pretrained(path, dtype=dtype)
            log.info("vision encoder %s from %s (width %d, its last feature map)", type(model).__name__,
                     path, model.config.hidden_size)
            return cls(model, feature_layer)
        config = transformers.AutoConfig.from_pretrained(path)
        vision_config = getattr(config, "vision_config", config)  # full CLIP/SigLIP checkpoints nest it
        name = _TOWERS.get(vision_config.model_type)
        if name is None:
            raise ValueError(f"{path}: vision model type '{vision_config.model_type}' is not supported; "
                             f"supported: {sorted(set(_TOWERS))}")
        model = getattr(transformers, name).from_pretrained(path, dtype=dtype)
        log.info("vision encoder %s from %s (%d blocks, width %d, features of layer %d)", name, path,
                 vision_config.num_hidden_layers, vision_config.hidden_size, feature_layer)
        return cls(model, feature_layer)

    @classmethod
    def from_config(cls, vision_config, feature_layer: int = -1) -> "VisionTower":
        import transformers

        own = _OWN.get(vision_config.model_type)
        if own:
            return cls(_own_class(own)(vision_config), feature_layer)
        return cls(getattr(transformers, _TOWERS[vision_config.model_type])(vision_config), feature_layer)

    def forward(self, pixel_values: torch.Tensor, **processor_outputs) -> torch.Tensor:
        return self.features(pixel_values, [self.feature_layer], **processor_outputs)[0]

    def features(self, pixel_values: torch.Tensor, layers, **processor_outputs) -> list:
        """The hidden states of several layers from one forward (VoRA distils every block)."""
        # loaders give fp32 pixels; a bf16 tower (train.dtype bf16) needs them in its own dtype
        pixel_values = pixel_values.to(next(self.model.parameters()).dtype)
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, **processor_outputs)
        return [out.hidden_states[l][:, 1:] if self.drop_cls else out.hidden_states[l] for l in layers]


def tower_config(path: str | Path):
    """The vision part of a local encoder directory's config (SigLIP/CLIP/AIMv2 through
    transformers, full checkpoints' nested vision_config included; the project's own towers by
    model_type), without loading weights."""
    import transformers

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"vision encoder directory {path} has no config.json")
    raw = json.loads((path / "config.json").read_text())
    own = _OWN.get(raw.get("model_type"))
    if own:
        return _own_class(own).config_class(**raw)
    config = transformers.AutoConfig.from_pretrained(path)
    return getattr(config, "vision_config", config)


def _own_class(spec: str):
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _unused(name: str, used_blocks: int) -> bool:
    m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    if m:
        return int(m.group(1)) >= used_blocks
    # the final norm: post_layernorm (SigLIP, CLIP) or AIMv2's top-level rms_norm; hidden_states
    # are taken before it
    return ("post_layernorm" in name or name.startswith("rms_norm.") or name.startswith("head.")
            or ".head." in name)
