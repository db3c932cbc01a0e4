"""Only this tensor-parallel rank's blocks of the row-parallel projections (o, down).

Their input is sharded over the TP ranks in whole blocks (docs/ARCHITECTURE.md, rule 4), so a rank
needs only its own blocks' rotations: its generator emits, and it factorises, 1/TP of them. The
generator is replicated on the TP ranks and must receive identical, complete gradients there:
- the query states of the blocks go through `LocalBlocks`, whose backward all-gathers the
  gradient of every rank's blocks (so everything before the heads gets the full gradient);
- the heads of o and down see only local blocks, so their weight gradients are partial sums:
  `sum_over_ranks` hooks add them up across the TP group.
"""

from __future__ import annotations

import torch


class LocalBlocks(torch.autograd.Function):
    """(..., blocks, width) -> this rank's blocks (dim -2); the backward all-gathers the gradient."""

    @staticmethod
    def forward(ctx, h, group):
        ctx.group = group
        n = h.shape[-2] // group.size()
        return h[..., group.rank() * n:(group.rank() + 1) * n, :].contiguous()

    @staticmethod
    def backward(ctx, grad):
        parts = [torch.empty_like(grad) for _ in range(ctx.group.size())]
        torch.distributed.all_gather(parts, grad.contiguous(), group=ctx.group)
        return torch.cat(parts, dim=-2), None


def local_blocks(group):
    """The VRMG's `select` function for a row-parallel projection on this rank."""
    return lambda h: LocalBlocks.apply(h, group)


def sum_over_ranks(parameters, group) -> None:
    """Hook each parameter so that its gradient is summed over the TP group before it accumulates
    (parameters that see only this rank's blocks)."""
    def reduce(grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad, group=group)
        return grad

    for p in parameters:
        p.register_hook(reduce)
