"""The Cayley block rotation: orthogonality, angle preservation, and the activation-side solve."""

import pytest
import torch

from megatron_ext.methods.rose.rotation import (block_cayley, block_diag_matrix, num_skew_params,
                                   rotate_transposed, skew_from_tril)


def _T(*lead, blocks=4, b=8, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*lead, blocks, num_skew_params(b), generator=g) * scale


def test_skew_layout_follows_tril_indices():
    b = 5
    T = torch.arange(1.0, num_skew_params(b) + 1)[None]
    P = skew_from_tril(T, b)[0]
    rows, cols = torch.tril_indices(b, b, -1)
    assert torch.equal(P[rows, cols], T[0])
    assert torch.equal(P, -P.T)


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_block_cayley_is_orthogonal_and_block_diagonal(scale):
    b, nb = 8, 4
    R = block_cayley(_T(3, blocks=nb, b=b, scale=scale), b)
    assert R.shape == (3, nb, b, b) and R.dtype == torch.float32
    eye = torch.eye(b)
    assert (R.transpose(-1, -2) @ R - eye).abs().max() < 1e-5
    dense = block_diag_matrix(R)
    off = dense.clone()
    for i in range(nb):
        off[:, i * b:(i + 1) * b, i * b:(i + 1) * b] = 0
    assert off.abs().max() == 0
    # R = (I + P)(I - P)^{-1}, checked against an explicit inverse
    P = skew_from_tril(_T(3, blocks=nb, b=b, scale=scale), b).double()
    ref = (torch.eye(b, dtype=torch.float64) + P) @ torch.linalg.inv(torch.eye(b, dtype=torch.float64) - P)
    assert (R.double() - ref).abs().max() < 1e-4 * max(1.0, scale)


def test_rotation_keeps_column_norms_and_pairwise_angles():
    b, nb, n = 8, 4, 12
    R = block_diag_matrix(block_cayley(_T(blocks=nb, b=b), b))
    W = torch.randn(nb * b, n, generator=torch.Generator().manual_seed(1))
    RW = R @ W
    assert (RW - W).abs().max() > 0.1  # it does rotate
    torch.testing.assert_close(RW.norm(dim=0), W.norm(dim=0), atol=1e-5, rtol=1e-5)
    cos = lambda M: (M / M.norm(dim=0)).T @ (M / M.norm(dim=0))
    torch.testing.assert_close(cos(RW), cos(W), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("apply", ["solve", "matmul", "auto"])
@pytest.mark.parametrize("s", [5, 20])  # fewer and more tokens than the block size
def test_rotate_transposed_matches_explicit_rotation_per_sample(apply, s):
    b, nb, batch = 8, 4, 3
    T = _T(batch, blocks=nb, b=b)
    x = torch.randn(s, batch, nb * b)  # Megatron layout: (seq, batch, hidden), T per sample
    R = block_diag_matrix(block_cayley(T, b))  # (batch, d, d)
    ref = torch.einsum("bji,sbj->sbi", R, x)  # R^T x per token
    torch.testing.assert_close(rotate_transposed(x, T, b, apply), ref, atol=1e-5, rtol=1e-5)
    # T without leading dims: one rotation for every token
    torch.testing.assert_close(rotate_transposed(x, T[1], b, apply), x @ R[1], atol=1e-5, rtol=1e-5)
    # batch-first activations (Hugging Face layout) with T broadcast over the sequence
    xb = x.transpose(0, 1)
    torch.testing.assert_close(rotate_transposed(xb, T[:, None], b, apply), ref.transpose(0, 1),
                               atol=1e-5, rtol=1e-5)


def test_rotated_projection_equals_materialised_weight():
    """z = (R W)^T x computed as W^T (R^T x): the frozen GEMM is untouched."""
    b, nb, n, batch = 8, 4, 6, 2
    T = _T(batch, blocks=nb, b=b)
    weight = torch.randn(n, nb * b)  # Megatron stores W^T
    x = torch.randn(7, batch, nb * b)
    R = block_diag_matrix(block_cayley(T, b))
    materialised = torch.einsum("sbd,bde,ne->sbn", x, R, weight)  # x^T (R W) per sample
    torch.testing.assert_close(torch.nn.functional.linear(rotate_transposed(x, T, b), weight),
                               materialised, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("apply", ["solve", "matmul"])
def test_low_precision_input_is_solved_in_fp32(apply):
    b, nb = 16, 4
    T = _T(2, blocks=nb, b=b, scale=3.0).bfloat16()
    x = torch.randn(9, 2, nb * b).bfloat16()
    y = rotate_transposed(x, T, b, apply)
    assert y.dtype == torch.bfloat16
    R = block_diag_matrix(block_cayley(T, b))
    ref = torch.einsum("bji,sbj->sbi", R, x.float())
    # fp32 solve: the only error left is bf16 rounding of the output
    assert (y.float() - ref).abs().max() <= 2 ** -7 * ref.abs().max()
    # norms preserved up to that rounding: an orthogonal map, not an approximation of one
    torch.testing.assert_close(y.float().norm(dim=-1), x.float().norm(dim=-1), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("apply", ["solve", "matmul"])
def test_rotate_transposed_gradients(apply):
    b, nb = 4, 2
    T = _T(2, blocks=nb, b=b).double().requires_grad_()
    x = torch.randn(3, 2, nb * b, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, T: rotate_transposed(x, T, b, apply), (x, T))


def test_shape_errors_name_the_mismatch():
    with pytest.raises(ValueError, match="x has 30 features; 4 blocks of 8 need 32"):
        rotate_transposed(torch.randn(2, 30), _T(blocks=4, b=8), 8)
    with pytest.raises(ValueError, match="block_size=6 needs 15"):
        rotate_transposed(torch.randn(2, 24), _T(blocks=4, b=8), 6)
    with pytest.raises(ValueError, match="apply='lu': choose"):
        rotate_transposed(torch.randn(2, 32), _T(blocks=4, b=8), 8, apply="lu")
    with pytest.raises(ValueError, match="do not line up"):
        rotate_transposed(torch.randn(5, 2, 32), _T(3, blocks=4, b=8), 8)
