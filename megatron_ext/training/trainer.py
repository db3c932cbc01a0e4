"""The Trainer: one training run of any registered method (S1/S2/S3 of ROSE, VLoRA, VoRA, LLaVA).

    trainer = Trainer(cfg)   # the method's spec, looked up once; every check that needs no process group
    result = trainer.train() # process group, model, optimizer, loader, checkpoints, metrics; the loop

Like torchtitan's trainer, the MethodSpec is taken once (model.method in the registry) and its
fields are read off it: the spec object, not the method's name, goes to the preflight, the model
builder, the loader, the validator and the MFU estimate. megatron_ext/train.py is the CLI over it.

The run directory (log.run_dir) holds config.yaml (resolved), checkpoints/ and metrics.jsonl.
A run whose run directory has a checkpoint resumes from it (checkpoint.resume); a new stage takes
the previous stage's weights with train.init_from.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from megatron_ext.training import quiet  # first: Megatron-Core's fallback warnings fire at import
from megatron.core import parallel_state as ps

from megatron_ext.compat import cpu_training
from megatron_ext.data.loader import build_loader, image_tokens, samples_per_epoch
from megatron_ext.device import host_tensor, place_model
from megatron_ext.hf.decoder import CheckpointError, check_preset, load_llm
from megatron_ext.methods import resolve_preset
from megatron_ext.methods.spec import MethodSpec
from megatron_ext.parallel import init_parallel
from megatron_ext.training import checkpoint, optim, preflight, stages
from megatron_ext.training import model as method_training
from megatron_ext.training.config import ConfigError, TrainConfig, num_microbatches, resolve_steps, validate
from megatron_ext.training.grads import make_finalize
from megatron_ext.training.metrics import Metrics, peak_memory_gib
from megatron_ext.training.mfu import mfu, peak_flops_total, run_flops_per_sample
from megatron_ext.training.preemption import Preemption
from megatron_ext.training.step import MicroBatches, NonFiniteLoss, train_step
from megatron_ext.training.validation import Validator

log = logging.getLogger("train")


def check_llm_weights(cfg: TrainConfig) -> None:
    """Before any model is built: model.llm_weights must be the preset's LLM (a mismatched
    rope_theta or norm would load silently)."""
    try:
        check_preset(resolve_preset(cfg.model.preset)["llm"], cfg.model.llm_weights)
    except CheckpointError as e:
        raise ConfigError(f"model.llm_weights={cfg.model.llm_weights}: {e}") from None


def log_trainable(summary: dict, trainable: list) -> None:
    """One line per parameter group (summed over TP/PP ranks; DP replicas are identical): whether
    it trains, its tensors and elements. Every parameter's name: Megatron's gradient-bucket list,
    shown at debug level (LOG_LEVEL=DEBUG; training/quiet.py)."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(), summary))
    if dist.get_rank() == 0:
        shards = {(tp, pp): s for tp, pp, s in gathered}.values()
        for group in summary:
            tensors, elements = (sum(s[group][k] for s in shards) for k in (0, 1))
            if tensors:
                log.info("params %-10s %-6s %5d tensors %14s elements", group,
                         "trains" if group in trainable else "frozen", tensors, f"{elements:,}")


def steps_from_data(cfg: TrainConfig, samples: int, rank0: bool) -> TrainConfig:
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


class Trainer:
    """One run of `cfg` in this process (one rank of torchrun or of a test's process group)."""

    def __init__(self, cfg: TrainConfig, world_size: int | None = None, keep_model: bool = False):
        """Resolve the method and run every check that needs no process group (one-line
        ConfigError/DataError on a mistake). world_size: the run's processes (default: the process
        group's where one exists, else $WORLD_SIZE, else 1). keep_model: train() also returns the
        model and, per parameter, whether it trains and whether the run changed it."""
        self.cfg = cfg
        self.spec: MethodSpec = preflight.method_spec(cfg)  # the run's one registry lookup
        if world_size is None:
            world_size = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
        self.dp = preflight.check(cfg, world_size, self.spec)
        self.trainable = method_training.trainable_groups(cfg, self.spec)
        method_training.check_training(cfg, self.trainable, self.spec)
        if cfg.model.llm_weights:
            check_llm_weights(cfg)
        self.keep_model = keep_model
        self.run_dir = Path(cfg.log.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"

    # --- setup: process group, model, data, optimizer -------------------------------------------

    def _setup(self) -> None:
        cfg, spec = self.cfg, self.spec
        self.on_cpu = cpu_training.install()
        init_parallel(cfg.parallel.tensor, cfg.parallel.pipeline, cfg.train.seed)
        validate(cfg, dist.get_world_size())
        self.rank0 = dist.get_rank() == 0
        if self.rank0:
            log.info(quiet.fallback_summary())
        self.dtype = method_training.train_dtype(cfg)
        self.nmb = num_microbatches(cfg, self.dp)

        self.preset, self.model = method_training.build_training_model(cfg, self.dtype, self.trainable, spec)
        quiet.demote_bucket_lists()
        log_trainable(stages.apply_trainable(self.model, self.trainable), self.trainable)
        self.resume_from = checkpoint.latest(self.ckpt_root) if cfg.checkpoint.resume else None
        if self.resume_from is None:
            self._initial_weights()

        place_model(self.model)  # every part, frozen or not, on this rank's GPU before DDP (no-op on CPU)
        dp_rank = ps.get_data_parallel_rank()
        self.loader = build_loader(cfg, self.preset, dp_rank, self.dp, spec)
        self.cfg = cfg = steps_from_data(cfg, samples_per_epoch(self.loader, cfg), self.rank0)
        self.validator = Validator(cfg, self.preset, dp_rank, self.dp, spec) if cfg.validation.every else None
        self.ddp = optim.wrap_ddp(self.model, cfg)
        self.optimizer = optim.build_optimizer(self.ddp, cfg, self.dtype)
        self.scheduler = optim.build_scheduler(self.optimizer, cfg)
        self.model.config.finalize_model_grads_func = make_finalize(self.model)
        self.model.config.grad_scale_func = self.optimizer.scale_loss
        if self.rank0:
            log.info("method=%s stage=%s trainable=%s | world=%d TP=%d PP=%d DP=%d | global batch %d = "
                     "%d micro-batches x %d x DP | %s on %s | optimizer: Megatron %s (%s)",
                     spec.name, cfg.train.stage, self.trainable, dist.get_world_size(),
                     cfg.parallel.tensor, cfg.parallel.pipeline, self.dp, cfg.train.global_batch_size,
                     self.nmb, cfg.train.micro_batch_size, self.dtype, "CPU/gloo" if self.on_cpu else "CUDA/NCCL",
                     "distributed optimizer" if cfg.optim.distributed else "optimizer",
                     type(self.optimizer).__name__)

        self.start = 0
        if self.resume_from is not None:
            self.start = checkpoint.load(self.resume_from, self.model, self.optimizer, self.scheduler,
                                         self.loader)["step"]
            if self.rank0:
                log.info("resumed from %s at step %d", self.resume_from, self.start)

        in_sequence = image_tokens(cfg, self.preset, spec)  # the image's tokens where they are in the sequence
        visual_tokens = in_sequence or (cfg.data.visual_tokens if cfg.data.kind == "synthetic" else 0)
        self.seq = cfg.data.seq_length + in_sequence
        self.sample_flops = run_flops_per_sample(cfg, self.preset, self.trainable, visual_tokens, spec)
        self.peak = peak_flops_total(dist.get_world_size())

    def _initial_weights(self) -> None:
        """A fresh run: the previous stage's weights (train.init_from), else the pretrained LLM's."""
        cfg = self.cfg
        if cfg.train.init_from:
            src = checkpoint.latest(Path(cfg.train.init_from))
            if src is None:
                raise ConfigError(f"train.init_from={cfg.train.init_from}: no checkpoint there")
            info = method_training.load_previous_stage(self.spec, src, self.model, cfg, self.preset, self.dtype)
            if self.rank0:
                log.info("init_from %s: %d tensors loaded; kept at initialisation: %s", src,
                         info["loaded"], info["kept_at_init"] or "none")
        elif cfg.model.llm_weights:
            load_llm(self.model.injected.language_model, cfg.model.llm_weights)

    # --- the loop ---------------------------------------------------------------------------------

    def _step_record(self, step: int, out: dict, dt: float, extra: dict) -> dict:
        """The metrics line of one optimizer step (metrics.jsonl, console, wandb)."""
        cfg = self.cfg
        corrupt = host_tensor([float(self.loader.corrupt)])
        dist.all_reduce(corrupt)  # summed over every process; each DP rank reads its own
        gbs = cfg.train.global_batch_size
        return dict(
            step=step, loss=out["loss"], lr=out["lr"], grad_norm=out["grad_norm"],
            samples_per_s=gbs / dt, tokens_per_s=gbs * self.seq / dt, step_time_s=dt,
            corrupt_samples=int(corrupt.item()) // (cfg.parallel.tensor * cfg.parallel.pipeline),
            peak_mem_gib=peak_memory_gib(), consumed_samples=step * gbs,
            mfu=mfu(self.sample_flops, gbs / dt, self.peak), **extra)

    def _save(self, step: int) -> None:
        cfg = self.cfg
        path = checkpoint.save(self.ckpt_root, step, self.model, self.optimizer, self.scheduler, self.loader,
                               extra={"stage": cfg.train.stage, "method": self.spec.name},
                               keep=cfg.checkpoint.keep, die_midway=cfg.debug.die_in_save_at_step == step)
        if self.rank0:
            log.info("checkpoint: %s", path)

    def train(self) -> dict:
        """Build everything, train to train.steps (or train.epochs), checkpoint every
        checkpoint.every steps and at the end. -> losses, steps (and the model with keep_model)."""
        self._setup()
        cfg, model = self.cfg, self.model
        before = {n: p.detach().clone() for n, p in model.named_parameters()} if self.keep_model else None
        metrics = Metrics(self.run_dir, cfg, cfg.train.steps, self.start, enabled=self.rank0)
        preempt = Preemption()
        losses, distill_losses, last_saved = [], [], self.start
        step = self.start
        try:
            while step < cfg.train.steps:
                step += 1
                t0 = time.perf_counter()
                batches = MicroBatches(self.loader, self.nmb)  # each decoded when the schedule reaches it
                out = train_step(self.ddp, self.optimizer, self.scheduler, batches, step,
                                 nan=cfg.debug.nan_at_step == step)
                dt = time.perf_counter() - t0
                losses.append(out["loss"])
                extra = dict(model.injected.step_metrics())  # e.g. ROSE's rotation size, this rank's
                if "distill_loss" in out:  # VoRA pre-training: total loss = loss + distill_loss
                    distill_losses.append(out["distill_loss"])
                    extra["distill_loss"] = out["distill_loss"]
                if self.validator is not None and self.validator.due(step, cfg.train.steps):
                    extra.update(self.validator.run(model))
                metrics.step(self._step_record(step, out, dt, extra))
                stop = preempt.agreed()
                if step % cfg.checkpoint.every == 0 or step == cfg.train.steps or stop:
                    self._save(step)
                    last_saved = step
                if cfg.debug.exit_after_step == step:  # fault injection (tests): a kill between saves
                    raise SystemExit(19)
                if stop:
                    if self.rank0:
                        log.warning("stopped at step %d for preemption; a requeued job resumes here", step)
                    break
        except NonFiniteLoss as e:
            good = checkpoint.latest(self.ckpt_root)
            msg = (f"{e}. The run stops; the last good checkpoint is {good} (step {last_saved}). "
                   f"Resume from it with a lower optim.lr or larger optim.warmup_steps, or inspect the data "
                   f"of that step.")
            if self.rank0:
                log.error(msg)
            metrics.close()
            raise NonFiniteLoss(msg) from None
        metrics.close()
        if self.rank0:
            log.info("done: step %d, loss %s -> %s", step, f"{losses[0]:.4f}" if losses else "-",
                     f"{losses[-1]:.4f}" if losses else "-")
        result = dict(losses=losses, step=step, start=self.start, run_dir=str(self.run_dir))
        if distill_losses:
            result["distill_losses"] = distill_losses
        if self.keep_model:
            result["model"] = model
            result["params"] = {n: (p.requires_grad, not torch.equal(before[n], p.detach()))
                                for n, p in model.named_parameters()}
        return result
