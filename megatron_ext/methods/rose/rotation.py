"""Block-diagonal Cayley rotations, applied to activations (ROSE, docs/ARCHITECTURE.md rules 1-2).

A projection W in R^{d x n} (Megatron stores weight = W^T, shape (n, d)) is rotated per image as
R_v W, with R_v = diag(R_1, ..., R_nb) and each block R_i = (I + P_i)(I - P_i)^{-1} for a
skew-symmetric P_i. The layer output is z = (R_v W)^T x = W^T (R_v^T x), so the frozen GEMM is
kept and only the input is rotated. For skew-symmetric P,

    R^T = (I - P)(I + P)^{-1} = 2 (I + P)^{-1} - I.

A rotation is built once per image and applied to many tokens, so the work is split in two:
- `cayley_transposed` / `rotations_of`: the b x b blocks R^T = 2 (I + P)^{-1} - I, in fp32 whatever
  the activation dtype, with `torch.linalg.inv_ex` (an LU factorisation; its error flag is not read,
  so nothing waits for the device: I + P is never singular, its singular values are >= 1).
  `rotations_of` builds every projection of a micro-batch with one call per block size;
- `apply_rotation`: R^T x for all tokens of a sample, one batched GEMM in the activation dtype.
`rotate_transposed` is the two in a row.

Where a block is wider than the tokens it rotates (a 7B down projection in S1: 296-wide blocks,
128 tokens per sample), forming the inverse costs more than using it: `rotations_of(T, tokens)`
then keeps A = I + P (`SolvedRotation`) and `apply_rotation` solves A y = x with the tokens as
right-hand sides (`solve_ex`: no error flag read either), 2 y - x. Same R^T x to fp32 rounding.

Each block's P is parametrised by T, its strictly-lower-triangular entries in
`torch.tril_indices(b, b, -1)` order: P[i, j] = T[k] and P[j, i] = -T[k].
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import torch

__all__ = ["num_skew_params", "block_size_of", "skew_from_tril", "block_cayley", "cayley_transposed",
           "SolvedRotation", "eye_plus_skew", "map_rotation", "rotations_of", "apply_rotation",
           "rotate_transposed", "block_diag_matrix"]


class SolvedRotation(NamedTuple):
    """R^T = 2 A^{-1} - I kept as A = I + P, (*B, nb, b, b) in fp32, for `apply_rotation` to solve.

    For blocks wider than the tokens they rotate: the solve with S right-hand sides and its
    backward (one more solve, one b x S x b GEMM) cost less than the explicit inverse and its
    backward (two b x b x b GEMMs). 7B down, 8 samples x 128 tokens, 64 blocks of 296, forward +
    backward, one CPU thread: 2.0 s against 2.8 s (bench/bench_rotation.py)."""
    A: torch.Tensor


Rotation = Union[torch.Tensor, SolvedRotation]  # R^T blocks, or A to solve with


def _solve_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16/fp8 inputs (docs/ARCHITECTURE.md, rule 2); fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def num_skew_params(block_size: int) -> int:
    """Number of free entries of a block_size x block_size skew-symmetric matrix."""
    return block_size * (block_size - 1) // 2


def block_size_of(num_params: int) -> int:
    """The block size b with b(b-1)/2 == num_params (T's last dimension names its blocks' size)."""
    b = (1 + math.isqrt(1 + 8 * num_params)) // 2
    if num_skew_params(b) != num_params or b < 2:
        raise ValueError(f"T has {num_params} entries per block, which is b(b-1)/2 for no block size b >= 2")
    return b


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

    The reference the fast path is tested against (a different formula and solver); for
    inspection and tests, not for training.
    """
    P = skew_from_tril(T.to(_solve_dtype(T.dtype)), block_size)
    eye = torch.eye(block_size, dtype=P.dtype, device=P.device)
    # (I + P)(I - P)^{-1} = ((I - P)^{-T} (I + P)^T)^T = solve((I - P)^T, (I + P)^T)^T
    return torch.linalg.solve((eye - P).transpose(-1, -2), (eye + P).transpose(-1, -2)).transpose(-1, -2)


def cayley_transposed(T: torch.Tensor, block_size: int) -> torch.Tensor:
    """R^T = 2 (I + P)^{-1} - I per block, (..., nb, b, b), in fp32 (fp64 stays fp64), differentiable.

    `inv_ex` rather than `inv`/`solve`: those check the factorisation's error flag on the host,
    which waits for the device at every call; I + P with P skew-symmetric is never singular
    (its singular values are at least 1), so there is nothing to check. Its backward is two GEMMs
    with the saved inverse (cheaper than an LU solve's, bench/bench_rotation.py).
    """
    dtype = _solve_dtype(T.dtype)
    with torch.autocast(T.device.type, enabled=False):  # rule 2: the factorisation stays in fp32
        eye = torch.eye(block_size, dtype=dtype, device=T.device)
        inverse, _ = torch.linalg.inv_ex(skew_from_tril(T.to(dtype), block_size) + eye)
        return 2.0 * inverse - eye


def eye_plus_skew(T: torch.Tensor, block_size: int) -> SolvedRotation:
    """A = I + P per block, (..., nb, b, b), in fp32 (fp64 stays fp64), for `apply_rotation` to solve."""
    dtype = _solve_dtype(T.dtype)
    with torch.autocast(T.device.type, enabled=False):
        eye = torch.eye(block_size, dtype=dtype, device=T.device)
        return SolvedRotation(skew_from_tril(T.to(dtype), block_size) + eye)


def map_rotation(fn, rotation: Rotation) -> Rotation:
    """fn applied to the tensor a rotation holds (R^T blocks, or a SolvedRotation's A)."""
    return SolvedRotation(fn(rotation.A)) if isinstance(rotation, SolvedRotation) else fn(rotation)


def rotations_of(T: dict, tokens: int | None = None) -> dict:
    """{key: T of (*B, nb, b(b-1)/2)} -> {key: R^T blocks of (*B, nb, b, b)} (cayley_transposed),
    with one factorisation call per block size: every projection of every layer of a micro-batch
    whose blocks have the same size is concatenated along the blocks and built at once (a small
    model's 9 x 9 blocks cost per call, not per FLOP).

    tokens: how many tokens of a sample each rotation will rotate, where known (training: the
    sequence). Blocks wider than that are kept as a `SolvedRotation` (A = I + P), cheaper to solve
    with than to invert. None (serving: reused for every decoded token): R^T for every block."""
    groups: dict = {}
    for key, t in T.items():
        groups.setdefault((t.shape[:-2], t.shape[-1], t.dtype, t.device), []).append(key)
    out = {}
    for (_, t, _, _), keys in groups.items():
        b = block_size_of(t)
        if tokens is not None and tokens < b:
            out.update({k: eye_plus_skew(T[k], b) for k in keys})  # one solve per layer anyway
            continue
        if len(keys) == 1:
            out[keys[0]] = cayley_transposed(T[keys[0]], b)
            continue
        sizes = [T[k].shape[-2] for k in keys]
        built = cayley_transposed(torch.cat([T[k] for k in keys], dim=-2), b)
        out.update(zip(keys, built.split(sizes, dim=-3)))
    return out


def block_diag_matrix(blocks: torch.Tensor) -> torch.Tensor:
    """(..., nb, b, b) -> the dense block-diagonal (..., nb*b, nb*b). For tests and merging."""
    *lead, nb, b, _ = blocks.shape
    out = blocks.new_zeros(*lead, nb, b, nb, b)
    idx = torch.arange(nb, device=blocks.device)
    out[..., idx, :, idx, :] = blocks.movedim(-3, 0)
    return out.reshape(*lead, nb * b, nb * b)


def apply_rotation(x: torch.Tensor, Rt: Rotation) -> torch.Tensor:
    """R^T x on the last dimension of x, for the blocks Rt = R^T of (*B, nb, b, b) (cayley_transposed),
    or for a SolvedRotation (rotations_of): 2 A^{-1} x - x by a solve in fp32, returned in x's dtype.

    Rt's leading dims *B line up with the trailing leading dims of x (numpy-style, right-aligned,
    each equal or 1); leading dims of x beyond them share one rotation: for Megatron's
    (seq, batch, hidden) activations and R^T per sample, the sequence. So x (s, b, h) with Rt
    (b, nb, bs, bs) rotates every token of sample i by R_i; Rt without leading dims rotates all of x.

    One batched GEMM, (tokens of a sample) x b times b x b per block and sample, in x's dtype: the
    fp32 blocks are cast to it (bf16 activations use bf16 GEMMs; under autocast the matmul is
    autocast like any other). Differentiable in x and Rt.
    """
    solved = isinstance(Rt, SolvedRotation)
    blocks = Rt.A if solved else Rt
    nb, b = blocks.shape[-3], blocks.shape[-1]
    if blocks.shape[-2] != b:
        raise ValueError(f"R^T blocks must be square, got {tuple(Rt.shape[-2:])}")
    if x.shape[-1] != nb * b:
        raise ValueError(f"x has {x.shape[-1]} features; {nb} blocks of {b} need {nb * b}")
    batch = blocks.shape[:-3]
    k = len(batch)
    lead = x.shape[:-1]
    if k > len(lead):
        raise ValueError(f"the rotations have {k} leading dims but x only {len(lead)}")
    per = lead[len(lead) - k:]
    if any(rb not in (1, xp) for xp, rb in zip(per, batch)):
        raise ValueError(f"the rotations' leading dims {tuple(batch)} do not line up with the trailing "
                         f"leading dims of x {tuple(lead)} (each must match or be 1)")
    shared = lead[: len(lead) - k]  # dims of x that share one rotation (e.g. the sequence)
    xs = x.reshape(math.prod(shared), *per, nb, b).movedim(0, -2)   # (*per, nb, S, b): rows are tokens
    if solved:
        with torch.autocast(x.device.type, enabled=False):  # rule 2: the solve stays in fp32
            cols = xs.to(blocks.dtype).transpose(-1, -2)           # (*per, nb, b, S): tokens are columns
            y = (2.0 * torch.linalg.solve_ex(blocks, cols)[0] - cols).transpose(-1, -2).to(x.dtype)
    else:
        y = torch.matmul(xs, Rt.to(x.dtype).transpose(-1, -2))      # (R^T x)^T = x^T R per block
    return y.movedim(-2, 0).reshape(x.shape)


def rotate_transposed(x: torch.Tensor, T: torch.Tensor, block_size: int) -> torch.Tensor:
    """R^T x for the block-diagonal R built from T (shapes as in apply_rotation, T of
    (*B, nb, b(b-1)/2)): `cayley_transposed` then `apply_rotation`. Where one rotation serves several
    calls (the layers of a micro-batch, the decoding steps of an image), build it once instead."""
    nb, t = T.shape[-2], T.shape[-1]
    if x.shape[-1] != nb * block_size:
        raise ValueError(f"x has {x.shape[-1]} features; {nb} blocks of {block_size} need {nb * block_size}")
    if t != num_skew_params(block_size):
        raise ValueError(f"T has {t} entries per block; block_size={block_size} needs {num_skew_params(block_size)}")
    return apply_rotation(x, cayley_transposed(T, block_size))
