"""Block-diagonal Cayley rotations, applied to activations (ROSE, docs/ARCHITECTURE.md rules 1-2).

A projection W in R^{d x n} (Megatron stores weight = W^T, shape (n, d)) is rotated per image as
R_v W, with R_v = diag(R_1, ..., R_nb) and each block R_i = (I + P_i)(I - P_i)^{-1} for a
skew-symmetric P_i. The layer output is z = (R_v W)^T x = W^T (R_v^T x), so the frozen GEMM is
kept and only the input is rotated. For skew-symmetric P,

    R^T = (I - P)(I + P)^{-1} = 2 (I + P)^{-1} - I,   hence   R^T x = 2 solve(I + P, x) - x.

That is one batched LU solve per block and sample (all tokens of a sample are right-hand sides of
the same factorisation), computed in fp32 whatever the activation dtype.

Each block's P is parametrised by T, its strictly-lower-triangular entries in
`torch.tril_indices(b, b, -1)` order: P[i, j] = T[k] and P[j, i] = -T[k].
"""

from __future__ import annotations

import torch

__all__ = ["num_skew_params", "skew_from_tril", "block_cayley", "rotate_transposed",
           "block_diag_matrix"]


def _solve_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16/fp8 activations (docs/ARCHITECTURE.md, rule 2); fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def num_skew_params(block_size: int) -> int:
    """Number of free entries of a block_size x block_size skew-symmetric matrix."""
    return block_size * (block_size - 1) // 2


def skew_from_tril(T: torch.Tensor, block_size: int) -> torch.Tensor:
    """(..., nb, b(b-1)/2) -> skew-symmetric P of shape (..., nb, b, b)."""
    if T.shape[-1] != num_skew_params(block_size):
        raise ValueError(
            f"T has {T.shape[-1]} entries per block; block_size={block_size} needs "
            f"{num_skew_params(block_size)}")
    rows, cols = torch.tril_indices(block_size, block_size, -1, device=T.device)
    lower = T.new_zeros(*T.shape[:-1], block_size, block_size)
    lower[..., rows, cols] = T
    return lower - lower.transpose(-1, -2)


def block_cayley(T: torch.Tensor, block_size: int) -> torch.Tensor:
    """Explicit orthogonal blocks R = (I + P)(I - P)^{-1}, shape (..., nb, b, b), computed in fp32.

    For inspection, export and tests; training never builds R (see rotate_transposed).
    """
    P = skew_from_tril(T.to(_solve_dtype(T.dtype)), block_size)
    eye = torch.eye(block_size, dtype=P.dtype, device=P.device)
    # (I + P)(I - P)^{-1} = ((I - P)^{-T} (I + P)^T)^T = solve((I - P)^T, (I + P)^T)^T
    return torch.linalg.solve((eye - P).transpose(-1, -2), (eye + P).transpose(-1, -2)).transpose(-1, -2)


def block_diag_matrix(blocks: torch.Tensor) -> torch.Tensor:
    """(..., nb, b, b) -> the dense block-diagonal (..., nb*b, nb*b). For tests and merging."""
    *lead, nb, b, _ = blocks.shape
    out = blocks.new_zeros(*lead, nb, b, nb, b)
    idx = torch.arange(nb, device=blocks.device)
    out[..., idx, :, idx, :] = blocks.movedim(-3, 0)
    return out.reshape(*lead, nb * b, nb * b)


def rotate_transposed(x: torch.Tensor, T: torch.Tensor, block_size: int,
                      apply: str = "auto") -> torch.Tensor:
    """R^T x for the block-diagonal R built from T, applied on the last dimension of x.

    Shapes: x is (*X, nb*b) and T is (*B, nb, b(b-1)/2). T's leading dims *B line up with the
    trailing leading dims of x (numpy-style, right-aligned); leading dims of x beyond them (for
    Megatron's (seq, batch, hidden) activations with T per sample: the sequence) share one
    factorisation. So x (s, b, h) with T (b, nb, t) rotates every token of sample i by R_i;
    T without leading dims rotates all of x by the same R.

    R^T x = 2 (I + P)^{-1} x - x, in fp32 (fp64 stays fp64), returned in x's dtype; differentiable
    in x and T. One LU factorisation per block and sample; its inverse is applied one of two ways:
      "solve":  2 * solve(I + P, x) - x, the tokens as right-hand sides of triangular solves;
      "matmul": the same LU solved against the block identity gives R^T = 2 (I + P)^{-1} - I
                (b x b per block), applied to the tokens with one batched GEMM.
    They agree to fp32 rounding. "auto" takes "matmul" when a factorisation serves at least
    block_size tokens (training, prefill): triangular solves with many right-hand sides run far
    below GEMM speed (bench/bench_layer.py measures both), and "solve" otherwise (decoding).
    """
    nb, t = T.shape[-2], T.shape[-1]
    if x.shape[-1] != nb * block_size:
        raise ValueError(f"x has {x.shape[-1]} features; {nb} blocks of {block_size} need {nb * block_size}")
    if t != num_skew_params(block_size):
        raise ValueError(f"T has {t} entries per block; block_size={block_size} needs {num_skew_params(block_size)}")
    batch = T.shape[:-2]
    k = len(batch)
    lead = x.shape[:-1]
    if k > len(lead):
        raise ValueError(f"T has {k} leading dims but x only {len(lead)}")
    if any(tb not in (1, xp) for xp, tb in zip(lead[len(lead) - k:], batch)):
        raise ValueError(f"T's leading dims {tuple(batch)} do not line up with the trailing leading "
                         f"dims of x {tuple(lead)} (each must match or be 1)")
    if apply not in ("auto", "solve", "matmul"):
        raise ValueError(f"apply={apply!r}: choose 'auto', 'solve' or 'matmul'")
    shared = lead[: len(lead) - k]  # dims of x that share one rotation (e.g. the sequence)
    per = lead[len(lead) - k:]
    tokens = 1
    for d in shared:
        tokens *= d
    if apply == "auto":
        apply = "matmul" if tokens >= block_size else "solve"

    dtype = _solve_dtype(torch.promote_types(x.dtype, T.dtype))
    eye = torch.eye(block_size, dtype=dtype, device=x.device)
    with torch.autocast(x.device.type, enabled=False):  # the solve stays in fp32 under autocast
        A = skew_from_tril(T.to(dtype), block_size) + eye
        if k:
            A = A.expand(*torch.broadcast_shapes(per, batch), nb, block_size, block_size)
        xs = x.to(dtype).reshape(tokens, *per, nb, block_size)
        if apply == "solve":  # (*per, nb, b, S): the tokens are right-hand sides
            xs = xs.permute(*range(1, k + 1), k + 1, k + 2, 0)
            y = 2.0 * torch.linalg.solve(A, xs) - xs
            y = y.permute(k + 2, *range(0, k + 2))
        else:                 # (*per, nb, S, b) @ R: rows are tokens, (R^T x)^T = x^T R
            Rt = 2.0 * torch.linalg.solve(A, eye.expand_as(A)) - eye
            xs = xs.permute(*range(1, k + 1), k + 1, 0, k + 2)
            y = torch.matmul(xs, Rt.transpose(-1, -2))
            y = y.permute(k + 1, *range(0, k + 1), k + 2)
    return y.reshape(*shared, *per, nb * block_size).to(x.dtype)
