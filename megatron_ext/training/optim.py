"""Megatron-Core DDP, (distributed) optimizer and the warmup + decay schedule."""

from __future__ import annotations

import logging

import torch

from megatron_ext.training import megatron_cpu
from megatron_ext.training.config import TrainConfig

log = logging.getLogger(__name__)


def wrap_ddp(model: torch.nn.Module, cfg: TrainConfig):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

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
