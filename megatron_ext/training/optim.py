"""Megatron-Core DDP, (distributed) optimizer and the warmup + decay schedule."""

from __future__ import annotations

import logging

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_ext.compat import cpu_training
from megatron_ext.training.config import TrainConfig
from megatron_ext.training.grads import pipeline_replicated_params

log = logging.getLogger(__name__)


def match_trainable_dtype(model: torch.nn.Module, dtype: torch.dtype) -> list[str]:
    """Cast every trainable floating-point parameter to `dtype` (the model's params_dtype) in place;
    returns the names of those cast.

    Under bf16/fp16, Megatron's optimizers assume every parameter they train is 16-bit (what its
    Float16Module guarantees by casting the whole model): the fp32 main copy lives in the optimizer.
    A trainable fp32 parameter beside 16-bit ones in a param group breaks their checkpointing: the
    distributed optimizer pairs model params with main params by buffer order while its groups hold
    fp32 shards first (get_parameter_state_dp_zero: size mismatch), and the plain one maps only the
    16-bit params to sharded tensors ("Param id N does not match any model sharded param"). Plain
    PyTorch modules (VLoRA's generator, VoRA's aux heads and vision embedding, torch-fallback norms)
    are built in fp32 whatever the training dtype, hence this cast. Frozen parameters keep their
    dtype (no optimizer sees them)."""
    cast = []
    if dtype not in (torch.bfloat16, torch.float16):
        return cast
    for name, p in model.named_parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            cast.append(name)
    return cast


def overlap_settings(cfg: TrainConfig, on_cuda: bool, pipeline_replicas: bool) -> dict:
    """What Megatron-LM turns on for speed on GPUs, where it applies here: the gradient reduction
    overlapped with the backward (bucket by bucket as gradients are ready) and, with the
    distributed optimizer, the parameter all-gather overlapped with the next forward. On CPU/gloo
    (tests, dev) one reduction after the last micro-batch. Not with parameters every pipeline stage
    holds a replica of (VLoRA's generator at PP > 1): their gradients are summed over the pipeline
    before the data-parallel reduction (training/grads.py), which an overlapped reduction would
    start before."""
    overlap = on_cuda and not pipeline_replicas
    return dict(overlap_grad_reduce=overlap, overlap_param_gather=overlap and cfg.optim.distributed)


def wrap_ddp(model: torch.nn.Module, cfg: TrainConfig):
    cast = match_trainable_dtype(model, model.config.params_dtype)
    if cast:
        log.info("trainable parameters cast to %s for the optimizer: %d tensors (%s%s)",
                 model.config.params_dtype, len(cast), ", ".join(cast[:3]), ", ..." if len(cast) > 3 else "")
    cpu_training.mark_params(model)
    overlap = overlap_settings(cfg, torch.cuda.is_available(), bool(pipeline_replicated_params(model)))
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,                      # main grads in fp32 under bf16 too
        use_distributed_optimizer=cfg.optim.distributed,
        bucket_size=None, **overlap)
    ddp = DistributedDataParallel(model.config, ddp_config, model)
    if overlap["overlap_grad_reduce"]:
        # as Megatron-LM's training loop: the schedule holds the reduction back until the last
        # micro-batch's backward (no_sync) and starts it per pipeline stage (grad_sync)
        model.config.no_sync_func = ddp.no_sync
        model.config.grad_sync_func = ddp.start_grad_sync
    return ddp


def build_optimizer(ddp_model, cfg: TrainConfig, dtype: torch.dtype):
    o = cfg.optim
    config = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad, bf16=dtype == torch.bfloat16, params_dtype=dtype,
        use_distributed_optimizer=o.distributed,
        overlap_param_gather=ddp_model.ddp_config.overlap_param_gather)  # as the DDP's
    return get_megatron_optimizer(config, [ddp_model])


def synced_parameters(optimizer):
    """Context for reading the model's parameters after a step (a checkpoint save): with the
    parameter all-gather overlapped, the model holds the previous step's values until the next
    forward gathers them; this gathers them now and re-arms the overlap afterwards."""
    chunks = [c for opt in getattr(optimizer, "chained_optimizers", [optimizer])
              for c in getattr(opt, "model_chunks", []) if getattr(c, "use_forward_hook", False)]
    return _Synced(list({id(c): c for c in chunks}.values()))


class _Synced:
    def __init__(self, chunks):
        self.chunks = chunks

    def __enter__(self):
        for c in self.chunks:
            c.disable_forward_pre_hook(param_sync=True)

    def __exit__(self, *exc):
        for c in self.chunks:
            c.enable_forward_pre_hook()


def build_scheduler(optimizer, cfg: TrainConfig):
    o, steps = cfg.optim, cfg.train.steps
    # increments are counted in optimizer steps (Megatron counts samples; both work, steps are
    # what the config speaks)
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0 if o.warmup_steps else o.lr, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=o.warmup_steps, lr_decay_steps=max(steps, o.warmup_steps + 1),
        lr_decay_style=o.decay_style, start_wd=o.weight_decay, end_wd=o.weight_decay,
        wd_incr_steps=steps, wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True, override_opt_param_scheduler=False)


def current_lr(optimizer) -> float:
    return optimizer.param_groups[0]["lr"]
