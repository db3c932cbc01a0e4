"""A training checkpoint as a Hugging Face folder: the run's model rebuilt from its resolved
config.yaml at TP=1, PP=1 (dist checkpoints reshard on load), its weights loaded, the image
processor that repeats the training loader's preprocessing, then export/folder.py."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoTokenizer, SiglipImageProcessorPil

from megatron_ext.core.vlm import VisionLanguageModel
from megatron_ext.core.weights import load_weights
from megatron_ext.data.loader import pixel_stats
from megatron_ext.export.folder import export_model
from megatron_ext.export.model_card import run_config_dir
from megatron_ext.export.target import check_target
from megatron_ext.hf import training_text
from megatron_ext.hf.vision_tower import VisionTower
from megatron_ext.methods import MethodSpec, get_method
from megatron_ext.parallel import init_parallel
from megatron_ext.training.checkpoint import latest
from megatron_ext.training.config import load_config
from megatron_ext.training.model import build_training_model
from pvcommon.errors import UsageError

log = logging.getLogger(__name__)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, tokenizer_dir: str | None = None,
                      image_processor_dir: str | None = None, vision_dir: str | None = None,
                      max_shard_size: str = "2GB", overwrite: bool = False,
                      evaluation: str | Path | None = None) -> Path:
    """A training checkpoint (any TP/PP layout; dist checkpoints reshard on load) -> a HF folder.

    Rebuilds the run's model from its resolved config.yaml at TP=1, PP=1 in this process. A run
    trained on precomputed visual features (S1 with a frozen encoder) names the encoder they came
    from with `vision_dir`; a run with model.vision_weights has its own (trained) tower."""
    check_target(out_dir, overwrite)  # before anything is loaded
    for flag, value in (("--checkpoint", checkpoint), ("--tokenizer", tokenizer_dir),
                        ("--image-processor", image_processor_dir), ("--vision", vision_dir),
                        ("--evaluation", evaluation)):
        if value is not None and not Path(value).exists():
            raise UsageError(f"{flag} {value}: no such file or directory")
    path = latest(Path(checkpoint))
    if path is None:
        raise UsageError(f"--checkpoint: no complete checkpoint under {checkpoint}")
    run_dir = run_config_dir(path)
    if run_dir is None:
        raise UsageError(f"--checkpoint: no config.yaml beside {path} (a run directory holds the resolved config)")
    cfg = load_config(str(run_dir / "config.yaml"), ["parallel.tensor=1", "parallel.pipeline=1"])
    spec = get_method(cfg.model.method)
    takes_features = spec.inputs == "features"
    if not takes_features:  # its model.vision_weights is a training-time teacher, not part of the model
        cfg.model.vision_weights = None
    tokenizer_dir = tokenizer_dir or (cfg.data.tokenizer if Path(cfg.data.tokenizer).is_dir() else None)
    if tokenizer_dir is None:
        raise UsageError(f"the run tokenised with '{cfg.data.tokenizer}'; pass --tokenizer with a "
                         "Hugging Face tokenizer directory for the export")
    if takes_features and not (cfg.model.vision_weights or vision_dir):
        raise UsageError("the run trained on precomputed visual features and has no vision tower "
                         "(model.vision_weights): pass --vision with the encoder they came from")
    if cfg.data.kind == "synthetic" and not (image_processor_dir or vision_dir):
        raise UsageError("pass --image-processor: a directory with the image processor's "
                         "preprocessor_config.json")
    init_parallel(1, 1)
    preset, model = build_training_model(cfg, torch.float32, spec=spec)
    result = load_weights(path, model)
    if result["kept_at_init"]:
        raise ValueError(f"{path} lacks {len(result['kept_at_init'])} tensors of the model, e.g. "
                         f"{result['kept_at_init'][:3]}")
    if takes_features and not cfg.model.vision_weights:
        model = VisionLanguageModel(model, VisionTower.from_pretrained(vision_dir), model.all_equipped,
                                    train_vision=False)
    if cfg.data.kind != "synthetic":  # trained on pixels: export exactly the loader's preprocessing
        image_processor = training_image_processor(cfg, spec, image_processor_dir)
    else:  # trained on features: the encoder's own processor
        image_processor = AutoImageProcessor.from_pretrained(image_processor_dir or vision_dir)
    log.info("exporting %s (%s, step directory %s)", run_dir, cfg.model.method, path.name)
    out = export_model(model, preset["llm"], out_dir, AutoTokenizer.from_pretrained(tokenizer_dir),
                       image_processor, max_shard_size=max_shard_size, overwrite=overwrite,
                       run_dir=run_dir, evaluation=evaluation, spec=spec)
    training_text.record(out, cfg.data)  # the prompt the evaluation reads back; files 0644
    return out


def training_image_processor(cfg, spec: MethodSpec, given_dir: str | None = None):
    """The training loader's preprocessing as an image processor: resize to data.image_size
    (bicubic), scale to [0, 1], normalise with the loader's statistics (megatron_ext/data/loader.py
    pixel_stats: the tower's own; 0.5 for VoRA). A given processor that differs is reported and
    not used: the export must see images as training did."""
    mean, std = pixel_stats(cfg, spec)
    size = cfg.data.image_size
    ours = SiglipImageProcessorPil(size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std))
    if given_dir is not None:
        given = AutoImageProcessor.from_pretrained(given_dir)
        same = (dict(getattr(given, "size", {}) or {}) == ours.size
                and list(given.image_mean) == list(mean) and list(given.image_std) == list(std)
                and not getattr(given, "do_center_crop", False))
        if not same:
            log.warning("%s preprocesses differently from the training loader (size %s, mean %s, std %s); "
                        "exporting the loader's preprocessing instead", given_dir,
                        getattr(given, "size", None), given.image_mean, given.image_std)
    return ours
