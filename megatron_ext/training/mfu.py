"""Model FLOPs utilisation from megatron_ext/flops.py's conventions.

Training FLOPs per sample, by what trains: a forward is 1x; a backward is 2x where the weights
train (input and weight gradients) and 1x where they are frozen but the gradient must pass through
them (input gradients only). So the LLM counts 3x forward when it trains and 2x when it is frozen
(S1 of every method: only the generator, adapters or projector train, yet the gradient crosses
every layer above them); the method's own parts (generator, rotations, adapters: its spec's FLOPs
model, the branch form as trained) 3x; a vision tower in front (model.vision_weights) 3x when it
trains and 1x (forward only) when frozen. MFU = achieved FLOP/s / (peak bf16 FLOP/s of the GPU x
GPUs). None where the device has no known peak (CPU, unlisted GPUs) or the method has no FLOPs model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from megatron_ext.core.flops import (attention_score_flops, decoder_projection_flops, lm_head_flops, llm_shape,
                                     vision_encoder_flops)
from megatron_ext.device import peak_flops
from megatron_ext.methods import MethodSpec, get_method


def train_flops_per_sample(preset: dict, method: str | MethodSpec, text_tokens: int, visual_tokens: int,
                           llm_trains: bool = True, tower_flops: float = 0.0,
                           tower_trains: bool = False) -> Optional[float]:
    """visual_tokens: per sample, in the sequence where the method puts them there. tower_flops:
    the vision tower's forward per sample (0: none in front, e.g. precomputed features). method:
    its name, or its spec as a run resolved it."""
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    if spec.flops is None:
        return None
    llm = llm_shape(preset)
    vdim = preset.get("vision", {}).get("hidden_size", llm["hidden"])
    seq = text_tokens + (visual_tokens if spec.visual_tokens_in_sequence else 0)
    llm_fwd = (decoder_projection_flops(llm, seq) + attention_score_flops(llm, seq)
               + lm_head_flops(llm, text_tokens))
    extras = sum(spec.flops(llm, spec.config(preset), text_tokens, visual_tokens, vdim, merged=False).values())
    return (3.0 if llm_trains else 2.0) * llm_fwd + 3.0 * extras + (3.0 if tower_trains else 1.0) * tower_flops


def tower_forward_flops(vision_weights: str | None, image_size: int) -> float:
    """A local HF vision tower's forward FLOPs per image at `image_size` (its config.json: width,
    blocks, MLP width, patch); 0 without a tower. Counts every block (the feature layer is usually
    the last or the one before)."""
    if not vision_weights:
        return 0.0
    path = Path(vision_weights) / "config.json"
    if not path.is_file():
        return 0.0
    c = json.loads(path.read_text())
    c = c.get("vision_config", c)
    try:
        shape = dict(hidden=c["hidden_size"], layers=c["num_hidden_layers"], ffn=c["intermediate_size"])
        tokens = (image_size // c["patch_size"]) ** 2
    except KeyError:
        return 0.0  # a tower described otherwise (EfficientNet): not counted
    return vision_encoder_flops(shape, tokens)


def run_flops_per_sample(cfg, preset: dict, trainable: list[str], visual_tokens: int,
                         spec: MethodSpec | None = None) -> Optional[float]:
    """train_flops_per_sample for a training run: what trains from its trainable groups, the tower
    from model.vision_weights where the method takes a tower's features."""
    spec = spec or get_method(cfg.model.method)
    tower = tower_forward_flops(cfg.model.vision_weights, cfg.data.image_size) if spec.inputs == "features" else 0.0
    return train_flops_per_sample(preset, spec, cfg.data.seq_length, visual_tokens,
                                  llm_trains="llm" in trainable, tower_flops=tower,
                                  tower_trains="vision" in trainable)


def peak_flops_total(world_size: int) -> Optional[float]:
    if not torch.cuda.is_available():
        return None
    peak = peak_flops(torch.cuda.get_device_name())
    return peak * world_size if peak else None


def mfu(flops_per_sample: Optional[float], samples_per_s: float, peak_total: Optional[float]) -> Optional[float]:
    if flops_per_sample is None or peak_total is None:
        return None
    return flops_per_sample * samples_per_s / peak_total
