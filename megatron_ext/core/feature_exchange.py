"""Visual features from the first pipeline stage to every later stage that holds equipped layers,
once per micro-batch (docs/ARCHITECTURE.md, rule 7), with their gradients sent back when the encoder trains.

Megatron's schedules move one activation tensor between neighbouring stages. Features travel on
process groups of their own, one per direction: `forward` carries features (first stage -> a
consumer), `backward` carries their gradients (consumer -> first stage). NCCL runs all traffic of
one communicator between a rank pair on one stream, in the order it was posted; with both
directions on one group, 1F1B posts "send features of micro-batch k+1" before "receive the
gradient of k" on the first stage and the reverse on the consumer, and a message larger than
NCCL's buffer then waits for a receive queued behind a send: a hang (gloo buffers it and never
shows it). With one direction per group, each communicator's sends and receives are posted in the
same order on both sides (every stage runs its micro-batch forwards, and their backwards, in
order), so each one always progresses; the test records this (tests/model/test_vision.py).

The receiver must know a message's shape to allocate it. A shape header (and one host sync to
read it) goes only with the first message of each (peer, hint): `hint` is host-side information
both sides know about the micro-batch (its input_ids' shape); later messages reuse the shape, and
a sender whose features change shape under a known hint fails loudly instead of sending a tensor
the receiver would misread.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

_HEADER_DIMS = 4  # features are at most 4-d; the header is padded to a fixed size


class _Channels:
    """The two one-directional groups of one pipeline group, and the shapes each peer has seen."""

    def __init__(self, ranks: list[int]):
        self.ranks = ranks
        self.forward = dist.new_group(ranks)
        self.backward = dist.new_group(ranks)
        self.sent_shapes: dict = {}      # (dst, hint) -> shape, on the sender
        self.received_shapes: dict = {}  # (src, hint) -> shape, on the receiver


_channels: dict = {}
_made_under = None  # the pipeline group the channels were made under


def _forget_stale_channels(pp) -> None:
    """Initialising model parallelism again destroys every group but the world's (parallel.py):
    channels made under the previous pipeline group are gone with it."""
    global _made_under
    if pp is not _made_under:
        _channels.clear()
        _made_under = pp


def channels() -> _Channels:
    """This rank's pipeline group's feature channels. The first call is collective over all ranks,
    so make it at model construction, never inside a pipeline schedule."""
    pp = parallel_state.get_pipeline_model_parallel_group()
    _forget_stale_channels(pp)
    key = tuple(dist.get_process_group_ranks(pp))
    if key not in _channels:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, key)
        for ranks in sorted(set(everyone)):  # same order on every rank, as new_group requires
            if ranks not in _channels:
                _channels[ranks] = _Channels(list(ranks))
    return _channels[key]


feature_group = channels  # the name the models call at construction


# every point-to-point message of this module goes through these two (tests record them)
def _send(tensor: torch.Tensor, dst: int, group, channel: str):
    return dist.isend(tensor, dst, group=group)


def _recv(tensor: torch.Tensor, src: int, group, channel: str) -> None:
    dist.recv(tensor, src, group=group)


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


def _header(shape, device) -> torch.Tensor:
    if len(shape) > _HEADER_DIMS:
        raise ValueError(f"features of shape {tuple(shape)}: the feature exchange sends at most "
                         f"{_HEADER_DIMS}-d tensors")
    return torch.tensor(list(shape) + [-1] * (_HEADER_DIMS - len(shape)), dtype=torch.long,
                        device=device)  # on the features' device: NCCL sends CUDA tensors only


def send_features(features: torch.Tensor, consumers: list[int], hint=()) -> None:
    """First stage: post the features to each consumer stage (pipeline ranks); `hint` is what the
    receivers pass too (host-side, e.g. the micro-batch's input_ids.shape)."""
    ch = channels()
    payload = features.detach().contiguous()
    for stage in consumers:
        dst = ch.ranks[stage]
        key = (dst, tuple(hint))
        known = ch.sent_shapes.get(key)
        if known is None:
            header = _header(payload.shape, payload.device)
            _pending.add(_send(header, dst, ch.forward, "forward"), header)
            ch.sent_shapes[key] = tuple(payload.shape)
        elif known != tuple(payload.shape):
            raise ValueError(f"visual features of shape {tuple(payload.shape)} after {known} for the "
                             f"same micro-batch shape {tuple(hint)}: the pipeline feature exchange needs "
                             "a fixed number of visual tokens per image (a fixed data.image_size)")
        _pending.add(_send(payload, dst, ch.forward, "forward"), payload)


def recv_features(dtype: torch.dtype, device, with_grad: bool, hint=()) -> torch.Tensor:
    """Consumer stage: receive this micro-batch's features; with_grad sends the gradient back."""
    ch = channels()
    src = ch.ranks[0]
    key = (src, tuple(hint))
    shape = ch.received_shapes.get(key)
    if shape is None:
        header = torch.empty(_HEADER_DIMS, dtype=torch.long, device=device)
        _recv(header, src, ch.forward, "forward")
        shape = tuple(d for d in header.tolist() if d >= 0)  # one host sync per (peer, hint)
        ch.received_shapes[key] = shape
    feats = torch.empty(shape, dtype=dtype, device=device)
    _recv(feats, src, ch.forward, "forward")
    if with_grad:
        feats.requires_grad_(True)

        def send_back(grad):
            grad = grad.contiguous()
            _pending.add(_send(grad, src, ch.backward, "backward"), grad)

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
        ch = channels()
        total = torch.zeros(ctx.shape, dtype=ctx.dtype, device=grad_output.device)
        for stage in ctx.consumers:
            g = torch.empty_like(total)
            _recv(g, ch.ranks[stage], ch.backward, "backward")
            total += g
        return grad_output, total, None


def collect_feature_grads(output: torch.Tensor, features: torch.Tensor, consumers: list[int]) -> torch.Tensor:
    return _CollectFeatureGrads.apply(output, features, consumers)


def finish() -> None:
    """Wait for every outstanding send (call after each optimizer step and before shutdown)."""
    _pending.drain()
