"""`python -m megatron_ext.train --dry-run`: every check a run makes before its process group
(training/preflight.py, the method's own check), then the resolved config and what the run would do;
no process group, model, loader or run directory is created. The Slurm scripts and the main job run
it before they start any worker, so a config mistake is one line before torchrun."""

from __future__ import annotations

from pathlib import Path

import yaml

from megatron_ext.training.model import check_training, trainable_groups
from megatron_ext.training import preflight
from megatron_ext.training.checkpoint import latest
from megatron_ext.training.config import ConfigError, TrainConfig, num_microbatches


def _start(cfg: TrainConfig) -> str:
    """Where the run's weights would come from, as run() decides it."""
    ckpt_root = Path(cfg.log.run_dir) / "checkpoints"
    resume = latest(ckpt_root) if cfg.checkpoint.resume and ckpt_root.is_dir() else None
    if resume is not None:
        return f"resumes from {resume}"
    if cfg.train.init_from:
        src = latest(Path(cfg.train.init_from))
        if src is None:
            raise ConfigError(f"train.init_from={cfg.train.init_from}: no checkpoint there")
        return f"starts from the previous stage's {src}"
    return "starts from " + (f"model.llm_weights={cfg.model.llm_weights}" if cfg.model.llm_weights
                             else "initialisation")


def _steps(t) -> str:
    """train.steps, or train.epochs (its steps follow from the data's size at start-up)."""
    return f"{t.steps} steps" if t.steps is not None else f"train.epochs={t.epochs:g} (steps from the data's size)"


def describe(cfg: TrainConfig, world_size: int) -> str:
    """Check everything that needs no process group; -> the resolved config and the plan.
    Raises the run's own ConfigError/DataError (one line) on a mistake."""
    spec = preflight.method_spec(cfg)  # once, as the Trainer does
    dp = preflight.check(cfg, world_size, spec)
    trainable = trainable_groups(cfg, spec)
    check_training(cfg, trainable, spec)
    start = _start(cfg)
    t, p = cfg.train, cfg.parallel
    data = f"{cfg.data.kind} data"
    if cfg.data.kind != "synthetic":
        data += f" ({preflight.check_manifest(cfg.data.manifest)} samples in {cfg.data.manifest})"
    plan = [
        f"{cfg.model.method} {t.stage}: {_steps(t)} of {t.global_batch_size} samples "
        f"({num_microbatches(cfg, dp)} micro-batches of {t.micro_batch_size} per rank) on {data}",
        f"world size {world_size}: TP {p.tensor} x PP {p.pipeline} x DP {dp}",
        f"trains: {', '.join(trainable)}",
        start,
        f"writes {cfg.log.run_dir} (config.yaml, checkpoints/ every {cfg.checkpoint.every} steps, metrics.jsonl)",
    ]
    return ("# resolved config\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) +
            "# dry run: checks passed; would run\n" + "".join(f"#   {line}\n" for line in plan))
