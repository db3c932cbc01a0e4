"""MethodSpec: everything the rest of the code needs to know about one way of bringing vision into
the LLM. Training, export, FLOPs, MFU, the loader, the step and the main job read these callables
and never compare a method's name (docs/ARCHITECTURE.md, "The method interface").

A method is a package under megatron_ext/methods/<name>/ whose __init__ defines `SPEC = MethodSpec(...)`;
megatron_ext/methods/__init__.py registers it with one line. The fields:

    name           the method's name: the `model.method` of training configs, the preset section it
                   reads ("rose:", "vlora:", ...), `method` in an export's config.json.
    config         (preset: dict, **overrides) -> the method's settings (a dataclass), from the
                   preset's section plus overrides; the papers' defaults where absent.
    build          (preset: dict, backend: str, dtype, config_overrides: dict | None, **overrides)
                   -> the LLM with the method injected, for this process's TP/PP rank (a
                   megatron_ext.core.injected.InjectedGPTModel). `overrides` go to `config`, except
                   builder switches the method documents (e.g. freeze_llm, merged).
    stages         {stage: parameter groups that train by default}, e.g. {"s1": ("generator",), ...};
                   groups are those of megatron_ext/core/param_groups.py.
    inputs         what a batch carries for the model besides text: "features" (a vision tower's
                   features: precomputed `visual_features`, or `pixel_values` encoded by the tower on
                   the first pipeline stage), "pixels" (raw `pixel_values` the method embeds itself)
                   or "none" (text only).
    visual_tokens_in_sequence
                   True where the image's tokens are positions of the LLM's sequence (VoRA's
                   patches, LLaVA's projected features): the FLOPs model counts them as tokens.
    image_tokens   (cfg: TrainConfig, preset: dict) -> tokens each image takes in the sequence
                   (0: the image enters the weights, not the sequence). A bad setting raises
                   ValueError with one line naming what to change.
    pixel_stats    (cfg: TrainConfig) -> (mean, std) the loaders normalise pixels with; None: the
                   vision tower's own statistics (0.5 without a tower).
    flops          (llm: dict, settings, text_tokens: int, visual_tokens: int, visual_dim: int,
                   merged: bool) -> {part: forward FLOPs per sample} of what the method adds to the
                   plain LLM (megatron_ext/flops.py's conventions; `settings` is `config`'s result;
                   `llm` is flops.py's shape dict). None: no FLOPs model (MFU is not reported).
    training_model (cfg: TrainConfig, preset: dict, dtype, config_overrides: dict | None,
                   trainable: list[str]) -> the model the training loop runs for this rank (the
                   LLM from `build`, e.g. wrapped with its vision tower or teacher in
                   megatron_ext.core.vlm.VisionLanguageModel). None: the default
                   (training/model.py with_vision_tower), `build`'s LLM wrapped with
                   model.vision_weights' tower when set.
    check          (cfg: TrainConfig, preset: dict, trainable: list[str]) -> None; raises
                   pvcommon.errors.ConfigError (one line, what to change) for settings the method
                   cannot train with, before anything is built. None: only the generic checks.
    init_from      (checkpoint: Path, model, cfg: TrainConfig, preset: dict, dtype,
                   config_overrides: dict | None) -> load_weights' info: how a stage takes the
                   previous stage's weights (VoRA folds S1's LoRA into S2's merged model).
                   None: core.weights.load_weights.
    export         (model, tokenizer) -> HFExport: what the Hugging Face folder holds for this
                   method (megatron_ext/export/folder.py writes it); `model` is what the training loop ran
                   or the bare LLM, built at TP=1, PP=1. None: no export yet.
    merge          (model) -> None: fold the method's static adapters into the base weights in
                   place (export and deployment); None where nothing static is left to fold.
    export_native  (model, llm: dict, out_dir, tokenizer, image_processor, max_shard_size: str,
                   max_new_tokens: int) -> Path: for a method transformers implements itself (LLaVA:
                   LlavaForConditionalGeneration), write that class's folder, no remote code;
                   export/folder.py then uses it instead of `export`. It returns None where the model
                   has a part transformers lacks (an EfficientNet tower): `export` writes the
                   remote-code folder then. None: the remote-code folder always.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

INPUTS = ("features", "pixels", "none")


def no_image_tokens(cfg, preset: dict) -> int:
    """The image enters the weights: no image tokens in the sequence."""
    return 0


@dataclass(frozen=True)
class HFExport:
    """One method's part of a Hugging Face export (written by megatron_ext/export/folder.py).

    lm           the InjectedGPTModel whose language_model becomes the folder's Qwen2 weights
                 (with the method's static adapters already merged, if it has any).
    state        {key: tensor} beside the LLM's weights (a generator, an embedding), full keys.
    injection    the settings the shipped modeling code rebuilds the method from (config.json
                 "injection"), plain JSON values.
    tower        the vision tower exported beside (megatron_ext.hf.vision_tower.VisionTower), or None.
    files        pure-PyTorch files of the method's own that the folder needs beyond the shared
                 modeling code's (megatron_ext/export/folder.py SHIPPED).
    processor    extra processor_config.json entries (e.g. an image placeholder and its count).
    """

    lm: Any
    state: dict
    injection: dict
    tower: Any = None
    files: Sequence[Path] = ()
    processor: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: Callable[..., Any]
    build: Callable[..., Any]
    stages: Mapping[str, Sequence[str]]
    inputs: str = "features"
    visual_tokens_in_sequence: bool = False
    image_tokens: Callable[[Any, dict], int] = no_image_tokens
    pixel_stats: Optional[Callable[[Any], tuple]] = None
    flops: Optional[Callable[..., dict]] = None
    training_model: Optional[Callable[..., Any]] = None
    check: Optional[Callable[..., None]] = None
    init_from: Optional[Callable[..., dict]] = None
    export: Optional[Callable[..., HFExport]] = None
    merge: Optional[Callable[[Any], None]] = None
    export_native: Optional[Callable[..., Path]] = None

    def __post_init__(self):
        if self.inputs not in INPUTS:
            raise ValueError(f"method {self.name}: inputs={self.inputs!r}, choose one of {list(INPUTS)}")
