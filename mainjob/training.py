"""Step 3: the method's stages, one torchrun per stage (two processes, data parallel), each
starting from the previous stage's checkpoint. A stage whose checkpoint already holds its last step is
skipped, so a re-run of a killed main job continues where it stopped."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import yaml

from mainjob import proc
from mainjob.settings import PROCESSES, Size, train_config
from megatron_ext.training.checkpoint import latest, step_dir_name
from megatron_ext.training.config import load_config
from megatron_ext.training.dry_run import describe
from pvcommon.lifetime import loopback_rendezvous

log = logging.getLogger("mainjob.training")


def stage_steps(config: Path, size: Size) -> int:
    train = yaml.safe_load(config.read_text())["train"]
    later = train["stage"] != "s1" and size.later_steps_scale is not None
    return max(2, round(train["steps"] * (size.later_steps_scale if later else size.steps_scale)))


def _finished(run_dir: Path, steps: int) -> bool:
    ckpt = latest(run_dir) if run_dir.is_dir() else None
    return ckpt is not None and ckpt.name == step_dir_name(steps)


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def train(out: Path, method: str, stages: tuple, size: Size, manifest: str, llm: Path,
          tower: Path, echo: bool = True, extra: dict | None = None) -> dict:
    """-> {stage: {run_dir, steps, wall_s, metrics}}. extra: {stage: [config overrides]} applied
    after the main job's own (bench.sweep: the cell's rate, preset and seed)."""
    results, previous = {}, None
    for stage in stages:
        config = train_config(method, stage)
        run_dir = out / "train" / stage
        steps = stage_steps(config, size)
        wall = 0.0
        if _finished(run_dir, steps):
            log.info("%s already trained (%d steps) in %s", stage, steps, run_dir)
        else:
            overrides = [f"train.steps={steps}", f"data.manifest={manifest}", f"data.tokenizer={llm}",
                         f"model.llm_weights={llm}", f"model.vision_weights={tower}", f"log.run_dir={run_dir}"]
            if previous is not None:
                overrides.append(f"train.init_from={previous}")
            overrides += list((extra or {}).get(stage, ()))
            describe(load_config(str(config), overrides), PROCESSES)  # a mistake: one line before torchrun
            cmd = [Path(sys.executable).parent / "torchrun", *loopback_rendezvous(),
                   f"--nproc-per-node={PROCESSES}", "-m", "megatron_ext.train",
                   "--config", config, *overrides]
            wall = proc.run(cmd, out / "logs" / f"train-{stage}.log", f"train {stage}", echo=echo,
                            env={"WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),  # the user's, if set
                                 "WANDB_SILENT": os.environ.get("WANDB_SILENT", "true")})
        results[stage] = dict(run_dir=str(run_dir), steps=steps, wall_s=round(wall, 1), metrics=metrics(run_dir))
        previous = run_dir
    return results
