"""One optimizer step: micro-batches through Megatron's schedule (1F1B when PP > 1), then the
optimizer. The loss is reduced from the last pipeline stage to every rank, so all ranks agree on
whether it is finite before anything is updated."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class NonFiniteLoss(RuntimeError):
    pass


def forward_step_func(nan: bool = False):
    def forward_step(data_iterator, model):
        b = next(data_iterator)  # every stage reads the micro-batch: its visual features (rule 7)
        if "pixel_values" in b:  # a model with its vision tower encodes on the first stage
            out = model(b["input_ids"], b["position_ids"], None, pixel_values=b["pixel_values"],
                        labels=b["labels"])
        else:
            out = model(b["input_ids"], b["position_ids"], None, b["visual_features"], labels=b["labels"])
        mask = b["loss_mask"]

        def loss_func(per_token):
            loss = (per_token.float() * mask).sum() / mask.sum().clamp(min=1)
            if nan:  # fault injection (debug.nan_at_step)
                loss = loss * float("nan")
            # the schedule scales the returned loss in place: report a copy
            return loss, {"loss": loss.detach().clone()}

        return out, loss_func

    return forward_step


def reduce_loss(results: list) -> float:
    """Mean micro-batch loss over DP replicas, known on every rank."""
    from megatron.core import parallel_state

    t = torch.zeros(2, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage() and results:
        t[0] = torch.stack([r["loss"].double() for r in results]).mean()
        t[1] = 1
    dist.all_reduce(t)
    return (t[0] / t[1]).item()


def train_step(ddp_model, optimizer, scheduler, batches: list, step: int, nan: bool = False) -> dict:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    # the schedule counts finished steps; stepping it first makes step k run at lr(k): warmup
    # starts above zero and the last step runs at min_lr
    scheduler.step(1)
    ddp_model.zero_grad_buffer()
    optimizer.zero_grad()
    seq = batches[0]["input_ids"].shape[1]
    results = get_forward_backward_func()(
        forward_step_func=forward_step_func(nan), data_iterator=iter(batches), model=[ddp_model],
        num_microbatches=len(batches), seq_length=seq,
        micro_batch_size=batches[0]["input_ids"].shape[0], forward_only=False)
    loss = reduce_loss(results)
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"step {step}: loss is {loss}; stopping before the optimizer step")
    ok, grad_norm, _ = optimizer.step()
    if grad_norm is not None and not math.isfinite(grad_norm):
        raise NonFiniteLoss(f"step {step}: gradient norm is {grad_norm}")
    return dict(loss=loss, lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm) if grad_norm is not None else None,
                update_successful=bool(ok))
