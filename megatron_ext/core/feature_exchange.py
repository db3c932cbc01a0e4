"""Visual features from the first pipeline stage to every later stage that holds equipped layers,
once per micro-batch (docs/ARCHITECTURE.md, rule 7), with their gradients sent back when the encoder trains.

Megatron's schedules move one activation tensor between neighbouring stages. Features go on a
process group of their own (so they never interleave with the schedule's activation messages):
the first stage posts a non-blocking send per consumer stage in its forward; a consumer receives
in its forward. Every stage runs its micro-batch forwards in the same order, so messages match.
For a trainable encoder, a consumer's backward sends the features' gradient back and the first
stage receives it in the backward of its own stage output; in 1F1B a stage's backward of a
micro-batch always follows the later stages' backward of it, so the gradient is there when asked.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_groups: dict = {}


def feature_group():
    """This rank's pipeline group, duplicated for the feature traffic. The first call is collective
    over all ranks, so make it at model construction, never inside a pipeline schedule."""
    from megatron.core import parallel_state

    pp = parallel_state.get_pipeline_model_parallel_group()
    key = tuple(dist.get_process_group_ranks(pp))
    if key not in _groups:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, key)
        for ranks in sorted(set(everyone)):  # same order on every rank, as new_group requires
            group = dist.new_group(list(ranks))
            _groups[ranks] = group
    return _groups[key], list(key)


class _Pending:
    """Outstanding non-blocking sends; waited on before their buffers could be reused."""

    def __init__(self):
        self.works = []

    def add(self, work, *buffers):
        self.works.append((work, buffers))  # buffers stay alive until the send completes

    def drain(self):
        for work, _ in self.works:
            work.wait()
        self.works.clear()


_pending = _Pending()


def send_features(features: torch.Tensor, consumers: list[int]) -> None:
    """First stage: post the features (and their shape) to each consumer stage (group ranks)."""
    group, ranks = feature_group()
    header = torch.tensor(features.shape, dtype=torch.long)
    payload = features.detach().contiguous()
    for stage in consumers:
        dst = ranks[stage]
        _pending.add(dist.isend(header, dst, group=group), header)
        _pending.add(dist.isend(payload, dst, group=group), payload)


def recv_features(dtype: torch.dtype, device, with_grad: bool) -> torch.Tensor:
    """Consumer stage: receive this micro-batch's features; with_grad sends the gradient back."""
    group, ranks = feature_group()
    header = torch.empty(3, dtype=torch.long)
    dist.recv(header, ranks[0], group=group)
    feats = torch.empty(*header.tolist(), dtype=dtype, device=device)
    dist.recv(feats, ranks[0], group=group)
    if with_grad:
        feats.requires_grad_(True)
        def send_back(grad):
            grad = grad.contiguous()
            _pending.add(dist.isend(grad, ranks[0], group=group), grad)

        feats.register_hook(send_back)
    return feats


class _CollectFeatureGrads(torch.autograd.Function):
    """Identity on the first stage's output; its backward adds the consumers' feature gradients."""

    @staticmethod
    def forward(ctx, output, features, consumers):
        ctx.consumers = consumers
        ctx.shape, ctx.dtype = features.shape, features.dtype
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output):
        group, ranks = feature_group()
        total = torch.zeros(ctx.shape, dtype=ctx.dtype, device=grad_output.device)
        for stage in ctx.consumers:
            g = torch.empty_like(total)
            dist.recv(g, ranks[stage], group=group)
            total += g
        return grad_output, total, None


def collect_feature_grads(output: torch.Tensor, features: torch.Tensor, consumers: list[int]) -> torch.Tensor:
    return _CollectFeatureGrads.apply(output, features, consumers)


def finish() -> None:
    """Wait for every outstanding send (call after each optimizer step and before shutdown)."""
    _pending.drain()
