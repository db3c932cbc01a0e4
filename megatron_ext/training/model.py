"""The model the training loop runs, for any registered method: what the Trainer, the export and
the dry run build from a TrainConfig. Everything method-specific is read off the spec."""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from megatron_ext.core.param_groups import GROUPS
from megatron_ext.core.presets import resolve_preset
from megatron_ext.core.specs import resolve_backend
from megatron_ext.core.vlm import VisionLanguageModel
from megatron_ext.core.weights import load_weights
from megatron_ext.hf.vision_tower import VisionTower
from megatron_ext.methods.registry import get_method, method_names
from megatron_ext.methods.spec import MethodSpec
from megatron_ext.training.config import ConfigError, TrainConfig
from megatron_ext.training.pipeline_balance import default_stage_layers


def train_dtype(cfg: TrainConfig) -> torch.dtype:
    if cfg.train.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.train.dtype]


def config_overrides(cfg: TrainConfig, spec: MethodSpec | None = None) -> dict:
    """TransformerConfig settings that come from the training config (spec: the run's method, as
    the Trainer resolved it; looked up from cfg without one)."""
    out = {"fp8": cfg.train.fp8} if cfg.train.fp8 else {}
    out.update(RECOMPUTE[cfg.train.recompute])
    if torch.cuda.is_available() and resolve_backend(cfg.model.backend) == "te":
        # TE adds weight gradients straight into Megatron DDP's fp32 main_grad (no extra buffer)
        out["gradient_accumulation_fusion"] = True
    if cfg.parallel.pipeline > 1:
        preset = resolve_preset(cfg.model.preset)
        spec = spec or get_method(cfg.model.method)
        try:
            in_sequence = spec.image_tokens(cfg, preset)
        except Exception:  # noqa: BLE001 - the method's check reports a bad vision setting
            in_sequence = 0
        first, last = default_stage_layers(cfg, preset, trainable_groups(cfg, spec), in_sequence, spec)
        for key, value in (("num_layers_in_first_pipeline_stage", first),
                           ("num_layers_in_last_pipeline_stage", last)):
            if value is not None:
                out[key] = value
    return out


# train.recompute -> Megatron's settings: full recomputes each layer (one per unit); the
# conditioning reaches the recomputed layers (core/context.py). selective: core attention only
RECOMPUTE = {None: {}, "full": dict(recompute_granularity="full", recompute_method="uniform",
                                    recompute_num_layers=1),
             "selective": dict(recompute_granularity="selective")}


def default_trainable(method: str, stage: str) -> list[str]:
    """The parameter groups that train in `stage` of `method` (its spec's stages)."""
    return stage_groups(get_method(method), stage)


def stage_groups(spec: MethodSpec, stage: str) -> list[str]:
    """The parameter groups that train in `stage` of the method `spec`."""
    try:
        return list(spec.stages[stage])
    except KeyError:
        known = {m: sorted(get_method(m).stages) for m in method_names()}
        raise ValueError(f"no default trainable set for method={spec.name!r} stage={stage!r}; "
                         f"known: {known}; or set train.trainable to a list of {list(GROUPS)}") from None


def trainable_groups(cfg: TrainConfig, spec: MethodSpec | None = None) -> list[str]:
    """train.trainable, or the method's default for the stage."""
    if cfg.train.trainable:
        return list(cfg.train.trainable)
    return stage_groups(spec or get_method(cfg.model.method), cfg.train.stage)


def check_training(cfg: TrainConfig, trainable: list[str], spec: MethodSpec | None = None) -> None:
    """What the method cannot train with, refused before anything is built."""
    spec = spec or get_method(cfg.model.method)
    if spec.check is not None:
        spec.check(cfg, resolve_preset(cfg.model.preset), trainable)


def with_vision_tower(spec: MethodSpec, cfg: TrainConfig, preset: dict, dtype: torch.dtype,
                      overrides: dict | None, trainable: list[str]):
    """The default training model: the method's LLM, wrapped with model.vision_weights' tower (on
    the first pipeline stage; its features reach the stages with equipped layers) when set."""
    lm = spec.build(preset, cfg.model.backend, dtype, overrides)
    if not cfg.model.vision_weights:
        if cfg.data.kind != "synthetic":
            raise ConfigError(
                f"data.kind={cfg.data.kind} delivers images (pixel_values), but the {spec.name} "
                f"model built here has no vision tower to encode them; set model.vision_weights (a local "
                f"SigLIP/CLIP directory) or train on precomputed features (data.kind=synthetic)")
        return lm
    if cfg.data.kind == "synthetic":
        raise ConfigError("data.kind=synthetic supplies visual features, which bypass the vision tower; "
                          "unset model.vision_weights or read images (data.kind=webdataset|dali)")
    if spec.inputs != "features":
        raise ConfigError(f"model.vision_weights: method {spec.name} does not take a vision "
                          f"tower's features")
    tower = VisionTower.from_pretrained(cfg.model.vision_weights, dtype=dtype) \
        if ps.is_pipeline_first_stage() else None
    return VisionLanguageModel(lm, tower, lm.all_equipped, "vision" in trainable)


def build_training_model(cfg: TrainConfig, dtype: torch.dtype, trainable: list[str] | None = None,
                         spec: MethodSpec | None = None):
    """(preset, the model of cfg's method for this rank) as the training loop runs it."""
    spec = spec or get_method(cfg.model.method)
    preset = resolve_preset(cfg.model.preset)
    trainable = trainable_groups(cfg, spec) if trainable is None else trainable
    torch.manual_seed(cfg.train.seed)
    build = spec.training_model or (lambda *args: with_vision_tower(spec, *args))
    return preset, build(cfg, preset, dtype, config_overrides(cfg, spec), trainable)


def load_previous_stage(spec: MethodSpec, checkpoint, model, cfg: TrainConfig, preset: dict,
                        dtype: torch.dtype) -> dict:
    """train.init_from: the previous stage's weights, the method's way (load_weights by default)."""
    if spec.init_from is None:
        return load_weights(checkpoint, model)
    return spec.init_from(checkpoint, model, cfg, preset, dtype, config_overrides(cfg, spec))
