"""The Cayley block rotation: orthogonality, angle preservation, the rotations built once
(cayley_transposed, rotations_of) and applied to the activations (apply_rotation)."""

import pytest
import torch

from megatron_ext.methods.rose.rotation import (apply_rotation, block_cayley, block_diag_matrix,
                                                block_size_of, cayley_transposed, num_skew_params,
                                                rotate_transposed, rotations_of, skew_from_tril,
                                                SolvedRotation, eye_plus_skew)


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


@pytest.mark.parametrize("s", [1, 5, 20])  # decoding, fewer and more tokens than the block size
def test_rotate_transposed_matches_explicit_rotation_per_sample(s):
    b, nb, batch = 8, 4, 3
    T = _T(batch, blocks=nb, b=b)
    x = torch.randn(s, batch, nb * b)  # Megatron layout: (seq, batch, hidden), T per sample
    R = block_diag_matrix(block_cayley(T, b))  # (batch, d, d)
    ref = torch.einsum("bji,sbj->sbi", R, x)  # R^T x per token
    torch.testing.assert_close(rotate_transposed(x, T, b), ref, atol=1e-5, rtol=1e-5)
    # T without leading dims: one rotation for every token
    torch.testing.assert_close(rotate_transposed(x, T[1], b), x @ R[1], atol=1e-5, rtol=1e-5)
    # batch-first activations (Hugging Face layout) with T broadcast over the sequence
    xb = x.transpose(0, 1)
    torch.testing.assert_close(rotate_transposed(xb, T[:, None], b), ref.transpose(0, 1),
                               atol=1e-5, rtol=1e-5)
    # and a (seq, batch) view of batch-first activations, as the export's layers pass them
    torch.testing.assert_close(apply_rotation(xb.contiguous().transpose(0, 1), cayley_transposed(T, b)),
                               ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.05, 1.0, 10.0])
def test_built_rotation_is_the_explicit_cayley_transposed(scale):
    """cayley_transposed (2 (I + P)^{-1} - I by inv_ex) against (I + P)(I - P)^{-1} in fp64 and
    against block_cayley (another formula, another solver)."""
    b = 8
    T = _T(3, blocks=4, b=b, scale=scale)
    Rt = cayley_transposed(T, b)
    assert Rt.dtype == torch.float32 and Rt.shape == (3, 4, b, b)
    eye = torch.eye(b, dtype=torch.float64)
    P = skew_from_tril(T.double(), b)
    ref = (eye + P) @ torch.linalg.inv(eye - P)
    assert (Rt.double() - ref.transpose(-1, -2)).abs().max() < 1e-5 * max(1.0, scale)
    torch.testing.assert_close(Rt, block_cayley(T, b).transpose(-1, -2), atol=1e-5, rtol=1e-5)
    assert torch.equal(cayley_transposed(torch.zeros_like(T), b), eye.float().expand(3, 4, b, b))


def _applied(Rt, dtype):
    """The rotation apply_rotation actually applies in `dtype`, block by block: rotating the unit
    rows e_i of every block gives row i of each block's R (blocks (*B, nb, b, b), fp32)."""
    nb, b = Rt.shape[-3], Rt.shape[-1]
    rows = torch.eye(b).repeat(1, nb)[:, None, :].expand(b, Rt.shape[0], nb * b).to(dtype)
    out = apply_rotation(rows, Rt)                    # (b, batch, nb*b): row i = (R^T e_i)^T
    assert out.dtype == dtype
    return out.float().unflatten(-1, (nb, b)).permute(1, 2, 0, 3)  # (batch, nb, b, b): R per block


@pytest.mark.parametrize("dtype, bound", [(torch.float32, 1e-5),
                                          # bf16 blocks: entries rounded by at most 2^-8 relative
                                          # (bf16's unit roundoff), so |R^T R - I| <= 2 * 2^-8
                                          # (+ fp32 rounding): columns have unit norm
                                          (torch.bfloat16, 2 ** -7 + 1e-5)])
@pytest.mark.parametrize("scale", [0.05, 1.0, 10.0])
def test_applied_rotation_is_orthogonal_in_every_dtype(dtype, bound, scale):
    b = 16
    Rt = cayley_transposed(_T(2, blocks=4, b=b, scale=scale), b)
    applied = _applied(Rt, dtype)
    eye = torch.eye(b)
    err = (applied.transpose(-1, -2) @ applied - eye).abs().max()
    assert err <= bound, err
    if dtype == torch.float32:
        torch.testing.assert_close(applied, Rt.transpose(-1, -2), atol=0, rtol=0)


def test_rotations_of_builds_every_projection_at_once_like_one_by_one():
    g = torch.Generator().manual_seed(0)
    T = {(2, "q"): torch.randn(3, 4, num_skew_params(8), generator=g),
         (2, "down"): torch.randn(3, 4, num_skew_params(16), generator=g),
         (4, "q"): torch.randn(3, 4, num_skew_params(8), generator=g),
         (4, "o"): torch.randn(3, 2, num_skew_params(8), generator=g)}  # a TP rank's half of the blocks
    built = rotations_of(T)
    assert built.keys() == T.keys()
    for key, t in T.items():
        torch.testing.assert_close(built[key], cayley_transposed(t, block_size_of(t.shape[-1])),
                                   atol=1e-6, rtol=0)
    # gradients reach each T through the concatenation (checked on one sample and two blocks of
    # each: gradcheck's cost grows with inputs x outputs, the concatenation is the same)
    Ts = {k: v[:1, :2].clone().double().requires_grad_() for k, v in T.items()}
    assert torch.autograd.gradcheck(lambda *ts: tuple(rotations_of(dict(zip(Ts, ts))).values()),
                                    tuple(Ts.values()))


def test_block_size_of_inverts_num_skew_params():
    assert [block_size_of(num_skew_params(b)) for b in (2, 9, 56, 296)] == [2, 9, 56, 296]
    with pytest.raises(ValueError, match="T has 7 entries per block, which is b\\(b-1\\)/2 for no block size"):
        block_size_of(7)


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


def test_low_precision_input_factorised_in_fp32_applied_in_bf16():
    b, nb = 16, 4
    T = _T(2, blocks=nb, b=b, scale=3.0).bfloat16()
    x = torch.randn(9, 2, nb * b).bfloat16()
    y = rotate_transposed(x, T, b)
    assert y.dtype == torch.bfloat16
    assert cayley_transposed(T, b).dtype == torch.float32
    R = block_diag_matrix(block_cayley(T, b))
    ref = torch.einsum("bji,sbj->sbi", R, x.float())
    # fp32 factorisation, a bf16 GEMM with fp32 accumulation: bf16 rounding of R^T and of the output
    assert (y.float() - ref).abs().max() <= 2 ** -7 * ref.abs().max()
    # norms preserved up to that rounding: an orthogonal map, not an approximation of one
    torch.testing.assert_close(y.float().norm(dim=-1), x.float().norm(dim=-1), rtol=1e-2, atol=1e-2)


def test_under_autocast_the_factorisation_stays_fp32_and_the_gemm_follows_autocast():
    b, nb = 16, 4
    T = _T(2, blocks=nb, b=b, scale=1.0)
    x = torch.randn(9, 2, nb * b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Rt = cayley_transposed(T, b)
        y = apply_rotation(x, Rt)
    assert Rt.dtype == torch.float32 and y.dtype == torch.bfloat16
    ref = rotate_transposed(x, T, b)
    assert (y.float() - ref).abs().max() <= 2 ** -7 * ref.abs().max()


def test_rotate_transposed_gradients():
    b, nb = 4, 2
    T = _T(2, blocks=nb, b=b).double().requires_grad_()
    x = torch.randn(3, 2, nb * b, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, T: rotate_transposed(x, T, b), (x, T))


def test_shape_errors_name_the_mismatch():
    with pytest.raises(ValueError, match="x has 30 features; 4 blocks of 8 need 32"):
        rotate_transposed(torch.randn(2, 30), _T(blocks=4, b=8), 8)
    with pytest.raises(ValueError, match="block_size=6 needs 15"):
        rotate_transposed(torch.randn(2, 24), _T(blocks=4, b=8), 6)
    with pytest.raises(ValueError, match="do not line up"):
        rotate_transposed(torch.randn(5, 2, 32), _T(3, blocks=4, b=8), 8)
    with pytest.raises(ValueError, match="x has 30 features; 4 blocks of 8 need 32"):
        apply_rotation(torch.randn(2, 30), cayley_transposed(_T(blocks=4, b=8), 8))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("s", [1, 5])  # fewer tokens than the 8-wide blocks: where rotations_of solves
def test_solved_rotation_applies_the_same_rotation_and_gradients(dtype, s):
    """SolvedRotation (A = I + P, a solve on the activations) against the explicit R^T GEMM: the same
    values and the same gradients w.r.t. x and T, in every activation dtype (the solve in fp32)."""
    b, nb, batch = 8, 4, 3
    T = (_T(batch, blocks=nb, b=b) * 5).to(torch.float64 if dtype == torch.float64 else torch.float32)
    x = torch.randn(s, batch, nb * b, dtype=torch.float64).to(dtype)
    outs = {}
    for name, build in {"explicit": cayley_transposed, "solved": eye_plus_skew}.items():
        Tg, xg = T.clone().requires_grad_(), x.clone().requires_grad_()
        y = apply_rotation(xg, build(Tg, b))
        assert y.dtype == dtype and y.shape == x.shape
        (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs[name] = (y.detach().float(), xg.grad.float(), Tg.grad.float())
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for a, e in zip(outs["solved"], outs["explicit"]):
        torch.testing.assert_close(a, e, atol=tol, rtol=tol)


def test_rotations_of_solves_only_blocks_wider_than_the_tokens():
    T = {("l1", "q"): _T(2, blocks=4, b=8), ("l1", "down"): _T(2, blocks=4, b=16),
         ("l2", "q"): _T(2, blocks=4, b=8)}
    built = rotations_of(T, tokens=12)
    assert isinstance(built[("l1", "down")], SolvedRotation)
    assert all(torch.is_tensor(built[k]) for k in [("l1", "q"), ("l2", "q")])
    assert all(torch.is_tensor(r) for r in rotations_of(T).values())  # serving: R^T for every block
    x = torch.randn(12, 2, 64)
    torch.testing.assert_close(apply_rotation(x, built[("l1", "down")]),
                               apply_rotation(x, rotations_of(T)[("l1", "down")]), atol=1e-5, rtol=1e-5)
