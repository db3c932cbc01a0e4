"""Training entry point: S1/S2/S3 of ROSE, VLoRA and VoRA on Megatron-Core.

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
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from megatron_ext.training import quiet  # first: Megatron-Core's fallback warnings fire at import
from megatron_ext.device import host_tensor, place_model
from megatron_ext.hf.decoder import load_llm
from megatron_ext.training.config import (ConfigError, TrainConfig, load_config, num_microbatches, resolve_steps,
                                          validate)
from megatron_ext.training.dry_run import describe
from pvcommon.argparser import ArgumentParser
from pvcommon import lifetime  # at import: a writer a worker spawns takes its guard

log = logging.getLogger("train")


class _Preemption:
    """SIGUSR1 (Slurm's `--signal=USR1@<s>` warning before preemption or the time limit): save at
    the end of the step, then exit; the requeued job resumes from that checkpoint. SIGTERM keeps
    its default (a hung collective must stay killable)."""

    def __init__(self):
        self.flag = False
        signal.signal(signal.SIGUSR1, self._set)

    def _set(self, signum, _frame):
        log.warning("received signal %d: checkpointing after this step, then exiting", signum)
        self.flag = True

    def agreed(self) -> bool:
        t = host_tensor([1.0 if self.flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def _check_llm_weights(cfg: TrainConfig) -> None:
    """Before any model is built: model.llm_weights must be the preset's LLM (a mismatched
    rope_theta or norm would load silently)."""
    from megatron_ext.hf.decoder import CheckpointError, check_preset
    from megatron_ext.methods import resolve_preset

    try:
        check_preset(resolve_preset(cfg.model.preset)["llm"], cfg.model.llm_weights)
    except CheckpointError as e:
        raise ConfigError(f"model.llm_weights={cfg.model.llm_weights}: {e}") from None


def _log_trainable(summary: dict, trainable: list) -> None:
    """One line per parameter group (summed over TP/PP ranks; DP replicas are identical): whether
    it trains, its tensors and elements. Every parameter's name: Megatron's gradient-bucket list,
    shown at debug level (LOG_LEVEL=DEBUG; training/quiet.py)."""
    from megatron.core import parallel_state as ps

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(), summary))
    if dist.get_rank() == 0:
        shards = {(tp, pp): s for tp, pp, s in gathered}.values()
        for group in summary:
            tensors, elements = (sum(s[group][k] for s in shards) for k in (0, 1))
            if tensors:
                log.info("params %-10s %-6s %5d tensors %14s elements", group,
                         "trains" if group in trainable else "frozen", tensors, f"{elements:,}")


def _steps_from_data(cfg: TrainConfig, samples: int, rank0: bool) -> TrainConfig:
    """train.epochs -> train.steps for this data; the resolved config goes into the run directory
    (config.yaml: what an export or a resumed run reads). Logs how many passes the run makes."""
    epochs = cfg.train.epochs
    cfg = resolve_steps(cfg, samples)
    passes = cfg.train.steps * cfg.train.global_batch_size / samples
    if rank0:
        run_dir = Path(cfg.log.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        source = f"train.epochs={epochs:g} -> " if epochs is not None else ""
        log.info("data: %s%d steps x global batch %d = %.2f passes over %d training %s", source,
                 cfg.train.steps, cfg.train.global_batch_size, passes, samples,
                 "question-answer pairs" if cfg.data.task == "qa" else "samples")
    return cfg


def run(cfg: TrainConfig, keep_model: bool = False) -> dict:
    """Train per `cfg` in this process (one rank of torchrun or of a test's process group).
    Returns losses and steps; with keep_model, also the model and, per parameter of this rank,
    whether it trains and whether this run changed it (tests check trainable sets with it)."""
    from megatron.core import parallel_state as ps

    from megatron_ext.data.loader import build_loader, image_tokens, samples_per_epoch
    from megatron_ext.methods.training import (build_training_model, check_training, load_previous_stage,
                                               train_dtype, trainable_groups)
    from megatron_ext.parallel import init_parallel
    from megatron_ext.training import checkpoint, megatron_cpu, optim, stages
    from megatron_ext.training.grads import make_finalize
    from megatron_ext.training.metrics import Metrics, peak_memory_gib
    from megatron_ext.training.step import MicroBatches, NonFiniteLoss, train_step
    from megatron_ext.training.validation import Validator

    from megatron_ext.training import preflight

    # main() ran these before the process group started; a caller of run() gets them here
    dp = preflight.check(cfg, int(os.environ.get("WORLD_SIZE", "1")) if not dist.is_initialized()
                         else dist.get_world_size())
    on_cpu = megatron_cpu.install()
    init_parallel(cfg.parallel.tensor, cfg.parallel.pipeline, cfg.train.seed)
    validate(cfg, dist.get_world_size())
    rank0 = dist.get_rank() == 0
    if rank0:
        log.info(quiet.fallback_summary())
    run_dir = Path(cfg.log.run_dir)
    ckpt_root = run_dir / "checkpoints"
    dtype = train_dtype(cfg)
    nmb = num_microbatches(cfg, dp)

    trainable = trainable_groups(cfg)
    check_training(cfg, trainable)
    if cfg.model.llm_weights:
        _check_llm_weights(cfg)
    preset, model = build_training_model(cfg, dtype, trainable)
    quiet.demote_bucket_lists()
    summary = stages.apply_trainable(model, trainable)
    _log_trainable(summary, trainable)

    resume_from = checkpoint.latest(ckpt_root) if cfg.checkpoint.resume else None
    if resume_from is None and cfg.train.init_from:
        src = checkpoint.latest(Path(cfg.train.init_from))
        if src is None:
            raise ConfigError(f"train.init_from={cfg.train.init_from}: no checkpoint there")
        info = load_previous_stage(src, model, cfg, preset, dtype)
        if rank0:
            log.info("init_from %s: %d tensors loaded; kept at initialisation: %s", src,
                     info["loaded"], info["kept_at_init"] or "none")
    elif resume_from is None and cfg.model.llm_weights:
        load_llm(model.injected.language_model, cfg.model.llm_weights)

    place_model(model)  # every part, frozen or not, on this rank's GPU before DDP (no-op on CPU)
    loader = build_loader(cfg, preset, ps.get_data_parallel_rank(), dp)
    cfg = _steps_from_data(cfg, samples_per_epoch(loader, cfg), rank0)
    validator = Validator(cfg, preset, ps.get_data_parallel_rank(), dp) if cfg.validation.every else None
    ddp = optim.wrap_ddp(model, cfg)
    optimizer = optim.build_optimizer(ddp, cfg, dtype)
    scheduler = optim.build_scheduler(optimizer, cfg)
    model.config.finalize_model_grads_func = make_finalize(model)
    model.config.grad_scale_func = optimizer.scale_loss
    if rank0:
        log.info("method=%s stage=%s trainable=%s | world=%d TP=%d PP=%d DP=%d | global batch %d = "
                 "%d micro-batches x %d x DP | %s on %s | optimizer: Megatron %s (%s)",
                 cfg.model.method, cfg.train.stage, trainable, dist.get_world_size(),
                 cfg.parallel.tensor, cfg.parallel.pipeline, dp, cfg.train.global_batch_size, nmb,
                 cfg.train.micro_batch_size, dtype, "CPU/gloo" if on_cpu else "CUDA/NCCL",
                 "distributed optimizer" if cfg.optim.distributed else "optimizer",
                 type(optimizer).__name__)

    start = 0
    if resume_from is not None:
        start = checkpoint.load(resume_from, model, optimizer, scheduler, loader)["step"]
        if rank0:
            log.info("resumed from %s at step %d", resume_from, start)

    before = {n: p.detach().clone() for n, p in model.named_parameters()} if keep_model else None
    from megatron_ext.training.mfu import mfu, peak_flops_total, run_flops_per_sample
    in_sequence = image_tokens(cfg, preset)  # the image's tokens where they are in the sequence
    visual_tokens = in_sequence or (cfg.data.visual_tokens if cfg.data.kind == "synthetic" else 0)
    seq = cfg.data.seq_length + in_sequence
    sample_flops = run_flops_per_sample(cfg, preset, trainable, visual_tokens)
    peak = peak_flops_total(dist.get_world_size())
    metrics = Metrics(run_dir, cfg, cfg.train.steps, start, enabled=rank0)
    preempt = _Preemption()
    losses, distill_losses, last_saved = [], [], start
    step = start
    try:
        while step < cfg.train.steps:
            step += 1
            t0 = time.perf_counter()
            batches = MicroBatches(loader, nmb)  # each decoded when the schedule reaches it
            out = train_step(ddp, optimizer, scheduler, batches, step, nan=cfg.debug.nan_at_step == step)
            dt = time.perf_counter() - t0
            losses.append(out["loss"])
            extra = dict(model.injected.step_metrics())  # e.g. ROSE's rotation size, this rank's
            if "distill_loss" in out:  # VoRA pre-training: total loss = loss + distill_loss
                distill_losses.append(out["distill_loss"])
                extra["distill_loss"] = out["distill_loss"]
            if validator is not None and validator.due(step, cfg.train.steps):
                extra.update(validator.run(model))
            corrupt = host_tensor([float(loader.corrupt)])
            dist.all_reduce(corrupt)  # summed over every process; each DP rank reads its own
            metrics.step(dict(
                step=step, loss=out["loss"], lr=out["lr"], grad_norm=out["grad_norm"],
                samples_per_s=cfg.train.global_batch_size / dt,
                tokens_per_s=cfg.train.global_batch_size * seq / dt, step_time_s=dt,
                corrupt_samples=int(corrupt.item()) // (cfg.parallel.tensor * cfg.parallel.pipeline),
                peak_mem_gib=peak_memory_gib(), consumed_samples=step * cfg.train.global_batch_size,
                mfu=mfu(sample_flops, cfg.train.global_batch_size / dt, peak), **extra))
            stop = preempt.agreed()
            if step % cfg.checkpoint.every == 0 or step == cfg.train.steps or stop:
                path = checkpoint.save(ckpt_root, step, model, optimizer, scheduler, loader,
                                       extra={"stage": cfg.train.stage, "method": cfg.model.method},
                                       keep=cfg.checkpoint.keep,
                                       die_midway=cfg.debug.die_in_save_at_step == step)
                last_saved = step
                if rank0:
                    log.info("checkpoint: %s", path)
            if cfg.debug.exit_after_step == step:  # fault injection (tests): a kill between saves
                raise SystemExit(19)
            if stop:
                if rank0:
                    log.warning("stopped at step %d for preemption; a requeued job resumes here", step)
                break
    except NonFiniteLoss as e:
        good = checkpoint.latest(ckpt_root)
        msg = (f"{e}. The run stops; the last good checkpoint is {good} (step {last_saved}). "
               f"Resume from it with a lower optim.lr or larger optim.warmup_steps, or inspect the data "
               f"of that step.")
        if rank0:
            log.error(msg)
        metrics.close()
        raise NonFiniteLoss(msg) from None
    metrics.close()
    if rank0:
        log.info("done: step %d, loss %s -> %s", step, f"{losses[0]:.4f}" if losses else "-",
                 f"{losses[-1]:.4f}" if losses else "-")
    result = dict(losses=losses, step=step, start=start, run_dir=str(run_dir))
    if distill_losses:
        result["distill_losses"] = distill_losses
    if keep_model:
        result["model"] = model
        result["params"] = {n: (p.requires_grad, not torch.equal(before[n], p.detach()))
                            for n, p in model.named_parameters()}
    return result


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
    from megatron_ext.training import preflight
    from megatron_ext.training.step import NonFiniteLoss
    from pvcommon.errors import UserError, is_rank0, report
    from pvcommon.runlock import lock_run_dir

    if lifetime.launched_by_torchrun():  # a killed torchrun takes this worker and its writers along
        lifetime.die_with_launcher()
    started_here = not dist.is_initialized()  # an in-process caller's process group is left alone
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            if cfg.model.llm_weights:
                _check_llm_weights(cfg)
            plan = describe(cfg, args.world_size or int(os.environ.get("WORLD_SIZE", "1")))
            if is_rank0():
                print(plan, end="", flush=True)
            return 0
        preflight.check(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        if is_rank0():  # one holder per run directory; other ranks follow rank 0's outcome
            lock_run_dir(cfg.log.run_dir, "log.run_dir")
        run(cfg)
    except UserError as e:
        return report(e)
    except NonFiniteLoss:
        return 3
    finally:
        if started_here and dist.is_initialized():
            from megatron_ext.parallel import shutdown
            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
