"""Training config: a YAML file (configs/train/*.yaml) plus `section.key=value` overrides.

Every section is a dataclass read by the shared loader (pvcommon/config.py), so a misspelt key
fails at start-up with the list of known keys; `validate` checks what depends on the world size (batch divisibility, TP x PP) before any model is
built, with messages that say what to change.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from pvcommon import config as shared
from pvcommon.config import ConfigError  # noqa: F401  (training's name for it; exit code 2)

# the user turn before a caption (data.task caption): training's default, written into the export
# (megatron_ext/hf/training_text.py), which the evaluation reads
DEFAULT_PROMPT = "Describe the image."


@dataclass
class ModelSection:
    preset: str = "tiny"                 # configs/model/<preset>.yaml or a path
    method: str = "rose"                 # rose | vlora | vora
    backend: str = "auto"                # auto | te | local (TE on GPU, local on CPU)
    llm_weights: Optional[str] = None    # a local HF Qwen2/Llama directory to start the LLM from
    vision_weights: Optional[str] = None  # a local HF vision tower directory (S2/S3 with pixels)


@dataclass
class ParallelSection:
    tensor: int = 1
    pipeline: int = 1


@dataclass
class DataSection:
    kind: str = "synthetic"              # synthetic | webdataset | dali
    manifest: Optional[str] = None       # the data pipeline's manifest.json (webdataset, dali)
    tokenizer: str = "bytes"             # "bytes" (offline byte-level) or a local tokenizer dir
    seq_length: int = 32
    prompt: str = DEFAULT_PROMPT         # user turn before the caption; its tokens carry no loss
    task: str = "caption"                # caption | qa (each sample's question -> answer, loss on the answer)
    image_size: int = 224
    seed: int = 1234
    # synthetic features (tests, demo): `pairs` fixed (features, caption) pairs
    pairs: int = 8
    visual_tokens: int = 8


@dataclass
class TrainSection:
    stage: str = "s1"
    steps: Optional[int] = None          # optimizer steps; or epochs (exactly one of the two)
    micro_batch_size: int = 2
    global_batch_size: int = 8
    trainable: Optional[list] = None     # parameter groups; None: the method's default for the stage
    init_from: Optional[str] = None      # a checkpoint dir (or its run dir) to take weights from
    seed: int = 1234
    dtype: str = "auto"                  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    fp8: Optional[str] = None            # e.g. "hybrid" on GPUs with Transformer Engine FP8
    # GPU memory and pipeline balance (docs/GPU.md)
    recompute: Optional[str] = None      # full: every layer's activations recomputed in the backward;
    #                                      selective: core attention only; None: keep all
    first_stage_layers: Optional[int] = None  # decoder layers on the first pipeline stage (which also
    last_stage_layers: Optional[int] = None   # runs the tower, generator); None: from a cost estimate
    # wt-24 (your own data): passes over the training data instead of steps; steps become
    # ceil(epochs x samples / global batch) once the data is read (resolve_steps)
    epochs: Optional[float] = None


@dataclass
class OptimSection:
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_steps: int = 2
    decay_style: str = "cosine"
    distributed: bool = True             # Megatron's distributed optimizer (ZeRO-1 over DP)


@dataclass
class CheckpointSection:
    every: int = 10                      # steps between saves (and one at the end)
    keep: int = 2                        # newest complete checkpoints kept
    resume: bool = True                  # continue from <run_dir>/checkpoints/latest if present


@dataclass
class LogSection:
    run_dir: str = "runs/train"
    every: int = 1                       # console line every N steps (metrics.jsonl: every step)
    wandb: bool = True
    wandb_project: str = "paramvision"
    wandb_mode: Optional[str] = None     # None: $WANDB_MODE, else offline


@dataclass
class ValidationSection:
    """wt-24 (your own data): every `every` steps, the loss on `batches` micro-batches per
    data-parallel rank of the held-out shards with their own images and with shuffled images."""
    every: int = 0                       # 0: no validation
    batches: int = 4
    manifest: Optional[str] = None       # None: the training manifest's validation_manifest


@dataclass
class DebugSection:
    """Fault injection for the tests of the failure paths (never set in real configs)."""
    nan_at_step: Optional[int] = None    # the loss of this step becomes NaN
    die_in_save_at_step: Optional[int] = None  # os._exit midway through this step's save
    exit_after_step: Optional[int] = None  # os._exit right after this step (a kill between saves)


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    debug: DebugSection = field(default_factory=DebugSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: Optional[str], overrides: list[str] = ()) -> TrainConfig:
    """The YAML at `path` (None: all defaults) with `section.key=value` overrides (YAML values)."""
    return shared.load(TrainConfig, path, overrides, need_section=True, what="training config")


def validate(cfg: TrainConfig, world_size: int) -> int:
    """Checks that need the world size; returns the data-parallel size."""
    tp, pp = cfg.parallel.tensor, cfg.parallel.pipeline
    t = cfg.train
    if tp < 1 or pp < 1:
        raise ConfigError(f"parallel.tensor ({tp}) and parallel.pipeline ({pp}) must be >= 1")
    if world_size % (tp * pp):
        raise ConfigError(f"world size {world_size} is not divisible by parallel.tensor x "
                          f"parallel.pipeline = {tp} x {pp}; launch a multiple of {tp * pp} processes")
    dp = world_size // (tp * pp)
    if t.micro_batch_size < 1 or t.global_batch_size < 1:
        raise ConfigError("train.micro_batch_size and train.global_batch_size must be >= 1")
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be divisible by "
            f"train.micro_batch_size ({t.micro_batch_size}) x data-parallel size ({dp}) = "
            f"{t.micro_batch_size * dp}")
    if (t.steps is None) == (t.epochs is None):
        raise ConfigError(f"train.steps={t.steps} and train.epochs={t.epochs}: set exactly one of them "
                          f"(the other to null)")
    if t.epochs is not None and t.epochs <= 0:
        raise ConfigError(f"train.epochs must be > 0, got {t.epochs}")
    if t.steps is not None:
        check_steps(cfg)
    o = cfg.optim
    if o.decay_style not in ("cosine", "linear", "constant", "inverse-square-root"):
        raise ConfigError(f"optim.decay_style {o.decay_style!r}: use cosine, linear, constant or inverse-square-root")
    if not 0 <= o.min_lr <= o.lr:
        raise ConfigError(f"optim.min_lr ({o.min_lr}) must lie in [0, optim.lr = {o.lr}]")
    if cfg.data.kind not in ("synthetic", "webdataset", "dali"):
        raise ConfigError(f"data.kind {cfg.data.kind!r}: use synthetic, webdataset or dali")
    if cfg.data.task not in ("caption", "qa") or (cfg.data.task == "qa" and cfg.data.kind != "webdataset"):
        raise ConfigError(f"data.task {cfg.data.task!r} with data.kind={cfg.data.kind}: use caption, or qa "
                          f"with webdataset (question-answer pairs come from the training shards)")
    if cfg.data.kind != "synthetic" and not cfg.data.manifest:
        raise ConfigError(f"data.kind={cfg.data.kind} needs data.manifest (the data pipeline's manifest.json)")
    if t.dtype not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.dtype {t.dtype!r}: use auto, fp32 or bf16")
    if cfg.checkpoint.every < 1 or cfg.checkpoint.keep < 1:
        raise ConfigError("checkpoint.every and checkpoint.keep must be >= 1")
    v = cfg.validation
    if v.every < 0 or v.batches < 1:
        raise ConfigError(f"validation.every ({v.every}) must be >= 0 (0: off) and validation.batches "
                          f"({v.batches}) >= 1")
    if v.every and cfg.data.kind == "synthetic":
        raise ConfigError("validation.every needs held-out shards: data.kind webdataset (or dali) with a "
                          "pipeline manifest; set validation.every=0 for synthetic data")
    return dp


def check_steps(cfg: TrainConfig) -> None:
    t, o = cfg.train, cfg.optim
    if t.steps < 1:
        raise ConfigError(f"train.steps must be >= 1, got {t.steps}")
    if o.warmup_steps >= t.steps and t.steps > 1:
        raise ConfigError(f"optim.warmup_steps ({o.warmup_steps}) must be below train.steps ({t.steps})")


def resolve_steps(cfg: TrainConfig, samples: int) -> TrainConfig:
    """train.epochs -> train.steps for `samples` training samples (a config with steps is returned
    as it is)."""

    if cfg.train.steps is not None:
        return cfg
    steps = max(1, math.ceil(cfg.train.epochs * samples / cfg.train.global_batch_size))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
    check_steps(cfg)
    return cfg


def num_microbatches(cfg: TrainConfig, dp: int) -> int:
    return cfg.train.global_batch_size // (cfg.train.micro_batch_size * dp)
