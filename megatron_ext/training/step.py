"""One optimizer step: micro-batches through Megatron's schedule (1F1B when PP > 1), then the
optimizer. The loss is reduced from the last pipeline stage to every rank, so all ranks agree on
whether it is finite before anything is updated."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_ext.core import feature_exchange
from megatron_ext.device import compute_device, host_tensor


class NonFiniteLoss(RuntimeError):
    pass


_TEXT_KEYS = ("input_ids", "position_ids", "labels", "loss_mask")


def forward_step_func(nan: bool = False):
    def forward_step(data_iterator, model):
        b = next(data_iterator)  # every stage reads the micro-batch: its visual features (rule 7)
        if torch.cuda.is_available():  # the loaders build batches on the host
            b = {k: v.to(compute_device(), non_blocking=True) for k, v in b.items()}
        # the rest of the batch is what the method's model takes by name: visual_features, or
        # pixel_values (and image_mask where the image's tokens are in the sequence)
        inputs = {k: v for k, v in b.items() if k not in _TEXT_KEYS}
        mask = b["loss_mask"]
        # the mask goes in too: the output layer runs only where the loss reads (core/loss_positions.py)
        out = model(b["input_ids"], b["position_ids"], None, labels=b["labels"], loss_mask=mask, **inputs)

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
    t = host_tensor([0.0, 0.0])
    if ps.is_pipeline_last_stage() and results:
        t[0] = torch.stack([r["loss"].double() for r in results]).mean()
        t[1] = 1
    dist.all_reduce(t)
    return (t[0] / t[1]).item()


def aux_loss_scale(config, num_microbatches: int) -> float:
    """What the schedule multiplies a micro-batch's LM loss by before its backward: the optimizer's
    loss scale (grad_scale_func) / num_microbatches (loss_func returns a per-micro-batch mean).
    Losses whose gradient is injected where they are computed (VoRA's distillation, like
    Megatron's MoE aux losses) take the same factor, so the gradient is that of the total loss."""
    if config.grad_scale_func is None:
        return 1.0 / num_microbatches
    return float(config.grad_scale_func(torch.ones(1, device=compute_device()))) / num_microbatches


def reduce_aux(model) -> float | None:
    """The step's auxiliary loss (VoRA's distillation; mean over micro-batches and DP replicas) on
    every rank, None where the model has none: each pipeline stage holds the loss of its own
    blocks, so stages sum; TP ranks repeat it. Every rank's model has an aux loss or none alike
    (a stage without such blocks answers 0.0), so all or none of them enter the collective."""
    mine = model.stage_aux_loss()
    if mine is None:
        return None
    t = host_tensor([mine])
    dist.all_reduce(t)
    return t.item() / (ps.get_tensor_model_parallel_world_size() * ps.get_data_parallel_world_size())


class MicroBatches:
    """A step's micro-batches, each read from the loader when the schedule reaches it: one
    micro-batch's decoded images on the device at a time (not the whole step's), and decoding
    overlaps the previous micro-batch's compute. The first is read ahead for its shape."""

    def __init__(self, loader, count: int):
        self.loader, self.count = loader, count
        self._first = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        if index != 0:
            raise IndexError("micro-batches are read in order; only the first is available ahead")
        if self._first is None:
            self._first = self.loader.next_microbatch()
        return self._first

    def __iter__(self):
        for i in range(self.count):
            if i == 0:
                first, self._first = self[0], None  # held no longer than the schedule holds it
                yield first
            else:
                yield self.loader.next_microbatch()


def train_step(ddp_model, optimizer, scheduler, batches, step: int, nan: bool = False) -> dict:
    # the schedule counts finished steps; stepping it first makes step k run at lr(k): warmup
    # starts above zero and the last step runs at min_lr
    scheduler.step(1)
    ddp_model.zero_grad_buffer()
    optimizer.zero_grad()
    first = batches[0]["input_ids"]  # a list of batches, or MicroBatches read as the schedule goes
    seq, micro_batch_size = first.shape[1], first.shape[0]
    model = getattr(ddp_model, "module", ddp_model)
    model.begin_step(aux_loss_scale(model.config, len(batches)))
    results = get_forward_backward_func()(
        forward_step_func=forward_step_func(nan), data_iterator=iter(batches), model=[ddp_model],
        num_microbatches=len(batches), seq_length=seq,
        micro_batch_size=micro_batch_size, forward_only=False)
    feature_exchange.finish()  # every feature send of this step was received by now
    loss = reduce_loss(results)
    distill = reduce_aux(model)
    if not math.isfinite(loss) or (distill is not None and not math.isfinite(distill)):
        what = f"loss is {loss}" if not math.isfinite(loss) else f"distillation loss is {distill}"
        raise NonFiniteLoss(f"step {step}: {what}; stopping before the optimizer step")
    ok, grad_norm, _ = optimizer.step()
    if grad_norm is not None and not math.isfinite(grad_norm):
        raise NonFiniteLoss(f"step {step}: gradient norm is {grad_norm}")
    out = dict(loss=loss, lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm) if grad_norm is not None else None,
               update_successful=bool(ok))
    if distill is not None:
        out["distill_loss"] = distill
    return out


@torch.no_grad()
def eval_loss(model, batches: list) -> float:
    """Forward-only loss of fixed micro-batches at any TP/PP layout (validation, checks)."""
    results = get_forward_backward_func()(
        forward_step_func=forward_step_func(), data_iterator=iter(batches), model=[model],
        num_microbatches=len(batches), seq_length=batches[0]["input_ids"].shape[1],
        micro_batch_size=batches[0]["input_ids"].shape[0], forward_only=True)
    return reduce_loss(results)
