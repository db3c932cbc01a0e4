"""Per-step metrics: metrics.jsonl (one object per optimizer step), console progress, wandb.

Written by global rank 0 only; the loss it reports is reduced from the last pipeline stage.
wandb runs offline unless WANDB_MODE (or log.wandb_mode) says otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Metrics:
    def __init__(self, run_dir: Path, cfg, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.total, self.every = total_steps, cfg.log.every
        self.file = self.wandb = self.bar = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(run_dir / "metrics.jsonl", "a")  # a resumed run appends
        if cfg.log.wandb:
            self._init_wandb(run_dir, cfg)
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.t_start = time.time()

    def _init_wandb(self, run_dir: Path, cfg) -> None:
        import wandb

        mode = cfg.log.wandb_mode or os.environ.get("WANDB_MODE", "offline")
        self.wandb = wandb.init(project=cfg.log.wandb_project, dir=str(run_dir), mode=mode,
                                config=cfg.to_dict(), name=run_dir.name, resume="allow")
        log.info("wandb: mode=%s, files under %s", mode, run_dir / "wandb")

    def step(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if v is not None}, step=record["step"])
        s = record["step"]
        line = (f"loss {record['loss']:.4f} lr {record['lr']:.2e} gnorm {record['grad_norm']:.3f} "
                f"{record['samples_per_s']:.1f} samples/s {record['tokens_per_s']:.0f} tok/s")
        if record.get("mfu") is not None:
            line += f" MFU {100 * record['mfu']:.1f}%"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(line)
        elif s == 1 or s % self.every == 0 or s == self.total:
            log.info("step %d/%d  %s  mem %.2f GiB", s, self.total, line, record["peak_mem_gib"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
