"""Training entry point (the CLI over megatron_ext/training/trainer.py): S1/S2/S3 of ROSE, VLoRA,
VoRA and LLaVA on Megatron-Core.

    python -m megatron_ext.train --config configs/train/s1-rose-tiny.yaml train.steps=10
    torchrun --nproc-per-node 2 -m megatron_ext.train --config configs/train/s1-rose-tiny.yaml parallel.tensor=2

The run directory (log.run_dir) holds config.yaml (resolved), checkpoints/ and metrics.jsonl.
A run whose run directory has a checkpoint resumes from it (checkpoint.resume); a new stage takes
the previous stage's weights with train.init_from.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch.distributed as dist

from megatron_ext.training import quiet  # noqa: F401 - first: Megatron-Core's fallback warnings fire at import
from megatron_ext.parallel import shutdown
from megatron_ext.training.config import TrainConfig, load_config
from megatron_ext.training.dry_run import describe
from megatron_ext.training.step import NonFiniteLoss
from megatron_ext.training.trainer import Trainer, check_llm_weights
from pvcommon.argparser import ArgumentParser
from pvcommon.errors import UserError, is_rank0, report
from pvcommon.runlock import lock_run_dir
from pvcommon import lifetime  # at import: a writer a worker spawns takes its guard


def run(cfg: TrainConfig, keep_model: bool = False) -> dict:
    """Train per `cfg` in this process (one rank of torchrun or of a test's process group):
    megatron_ext/training/trainer.py. Returns losses and steps; with keep_model, also the model and,
    per parameter of this rank, whether it trains and whether this run changed it."""
    return Trainer(cfg, keep_model=keep_model).train()


def main(argv=None) -> int:
    """Config, overrides and every check that needs no process group run first; a mistake is one
    line (rank 0) and exit 2 (config) or 1 (data) on every rank, before anything is built."""
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="configs/train/<stage>.yaml")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=10")
    ap.add_argument("--dry-run", action="store_true", help="check everything, print the resolved config "
                    "and what would run, start nothing (megatron_ext/training/dry_run.py)")
    ap.add_argument("--world-size", type=int, help="with --dry-run: the processes the run will have "
                    "(default $WORLD_SIZE, else 1)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),  # DEBUG: every parameter's name
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    os.environ.setdefault("WANDB_MODE", "offline")

    if lifetime.launched_by_torchrun():  # a killed torchrun takes this worker and its writers along
        lifetime.die_with_launcher()
    started_here = not dist.is_initialized()  # an in-process caller's process group is left alone
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            if cfg.model.llm_weights:
                check_llm_weights(cfg)
            plan = describe(cfg, args.world_size or int(os.environ.get("WORLD_SIZE", "1")))
            if is_rank0():
                print(plan, end="", flush=True)
            return 0
        trainer = Trainer(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # every check before a process group
        if is_rank0():  # one holder per run directory; other ranks follow rank 0's outcome
            lock_run_dir(cfg.log.run_dir, "log.run_dir")
        trainer.train()
    except UserError as e:
        return report(e)
    except NonFiniteLoss:
        return 3
    finally:
        if started_here and dist.is_initialized():
            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
