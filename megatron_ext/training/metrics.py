"""Per-step metrics: metrics.jsonl (one object per optimizer step), console progress, wandb.
Steps that validate (training/validation.py) carry val_loss, val_loss_shuffled and val_image_gap.

Written by global rank 0 only; the loss it reports is reduced from the last pipeline stage.
wandb runs offline unless WANDB_MODE (or log.wandb_mode) says otherwise, as one run per run
directory across resumes and requeues (wandb_run_id).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
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


WANDB_ID_FILE = "wandb_id"


def wandb_run_id(run_dir: Path) -> str:
    """One wandb run per run directory: a resumed or requeued job continues it. The id is derived
    from the directory (its name and a hash of its absolute path) and stored in it, so a moved
    directory keeps its run."""
    stored = run_dir / WANDB_ID_FILE
    if stored.is_file():
        return stored.read_text().strip()
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]
    run_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_dir.name)[:55] + "-" + digest  # wandb: 64 chars at most
    run_dir.mkdir(parents=True, exist_ok=True)
    stored.write_text(run_id + "\n")
    return run_id


def drop_steps_after(path: Path, step: int) -> int:
    """A run resumed from the checkpoint of `step` trains the steps after it again: the killed
    run's records of those steps (and a line cut off mid-write) go, so that metrics.jsonl holds each
    step once, as the run the checkpoints continue trained it. Returns how many records went."""
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["step"] <= step:
            kept.append(line)
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return len(lines) - len(kept)


class Metrics:
    def __init__(self, run_dir: Path, cfg, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.total, self.every = total_steps, cfg.log.every
        self.file = self.wandb = self.bar = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        dropped = drop_steps_after(path, start_step)
        if dropped:
            log.info("metrics: %d records after step %d dropped: this run trains those steps again", dropped, start_step)
        self.file = open(path, "a")  # a resumed run appends
        if cfg.log.wandb:
            self._init_wandb(run_dir, cfg)
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.t_start = time.time()

    def _init_wandb(self, run_dir: Path, cfg) -> None:
        import wandb  # optional heavy dependency: only when log.wandb

        mode = cfg.log.wandb_mode or os.environ.get("WANDB_MODE", "offline")
        self.wandb = wandb.init(project=cfg.log.wandb_project, dir=str(run_dir), mode=mode,
                                config=cfg.to_dict(), name=run_dir.name, id=wandb_run_id(run_dir),
                                resume="allow")
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
        if record.get("val_loss") is not None:  # every validation, bar or not
            log.info("validation step %d: loss %.4f with the right images, %.4f with shuffled images "
                     "(shuffled - right %+.4f)", s, record["val_loss"], record["val_loss_shuffled"],
                     record["val_image_gap"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
