"""Megatron-Core DDP, (distributed) optimizer and the warmup + decay schedule."""

from __future__ import annotations

import logging

import torch

from megatron_ext.training import megatron_cpu
from megatron_ext.training.config import TrainConfig

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


def wrap_ddp(model: torch.nn.Module, cfg: TrainConfig):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    cast = match_trainable_dtype(model, model.config.params_dtype)
    if cast:
        log.info("trainable parameters cast to %s for the optimizer: %d tensors (%s%s)",
                 model.config.params_dtype, len(cast), ", ".join(cast[:3]), ", ..." if len(cast) > 3 else "")
    megatron_cpu.mark_params(model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,                      # main grads in fp32 under bf16 too
        use_distributed_optimizer=cfg.optim.distributed,
        overlap_grad_reduce=False,                    # one reduction after the last micro-batch
        bucket_size=None)
    return DistributedDataParallel(model.config, ddp_config, model)


def build_optimizer(ddp_model, cfg: TrainConfig, dtype: torch.dtype):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    o = cfg.optim
    config = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad, bf16=dtype == torch.bfloat16, params_dtype=dtype,
        use_distributed_optimizer=o.distributed)
    return get_megatron_optimizer(config, [ddp_model])


def build_scheduler(optimizer, cfg: TrainConfig):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

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
