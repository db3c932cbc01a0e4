"""ROSE's per-sample block rotation of one projection, four ways, side by side (not a test).

z = (R W)^T x for a block-diagonal Cayley rotation R = diag(R_i), R_i = (I + P_i)(I - P_i)^{-1}:
- solve:             R^T x = 2 solve(I + P, x) - x, the tokens as right-hand sides (LU + triangular solves);
- LU + GEMM:         the same LU solved against the b x b identity gives R^T, applied with one GEMM
                     (`rotate_transposed(apply="matmul")`, what training and prefill use);
- explicit inverse:  R^T = 2 inv(I + P) - I with torch.linalg.inv, then one GEMM;
- materialise R W:   the rotated weight W^T R^T per sample (from block_cayley), then one GEMM per
                     sample (what docs/ARCHITECTURE.md rule 1 forbids in training).
Forward + backward (w.r.t. x and T) of the rotated projection, and the orthogonality error
max |R^T R - I| of the rotation each path actually applies, at small and large T (the paper's
generator starts at T = 0; a trained one can reach large norms, where I + P is worse conditioned).
Rotations are computed in fp32 whatever the activation dtype (docs/ARCHITECTURE.md, rule 2).

    python bench/bench_rotation.py                       # 7B shapes (q and down), ~1 min on 2 CPU cores
    python bench/bench_rotation.py --shape tiny          # seconds
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.common import device, interleaved, load, machine, table  # noqa: E402

SHAPES = {  # (name, d_in, d_out, blocks): the q and down projections of the LLM
    "7b": [("q", 3584, 3584, 64), ("down", 18944, 3584, 64)],  # Qwen2.5-7B, the paper's 64 blocks
    "tiny": [("q", 256, 256, 16), ("down", 1024, 256, 16)],
}


def rotations(T: torch.Tensor, b: int):
    """R^T per block, (batch, nb, b, b), as each path computes it (for the orthogonality error)."""
    from megatron_ext.methods.rose.rotation import block_cayley, rotate_transposed, skew_from_tril

    nb = T.shape[-2]
    rows = torch.eye(b, device=T.device).repeat(1, nb)[:, None, :].expand(b, T.shape[0], nb * b)
    out = {}
    for path in ("solve", "matmul"):  # rotating e_i in every block gives row i of each block's R^T x
        Rt = rotate_transposed(rows, T, b, apply=path)        # (b, batch, nb*b): row i = (R^T e_i)^T
        out[path] = Rt.unflatten(-1, (nb, b)).permute(1, 2, 3, 0)  # (batch, nb, b, b): column i = R^T e_i
    eye = torch.eye(b, device=T.device)
    out["inverse"] = 2 * torch.linalg.inv(skew_from_tril(T.float(), b) + eye) - eye
    out["materialise"] = block_cayley(T, b).transpose(-1, -2)
    return out


def orthogonality_error(Rt: torch.Tensor) -> float:
    eye = torch.eye(Rt.shape[-1], device=Rt.device, dtype=Rt.dtype)
    return (Rt.transpose(-1, -2) @ Rt - eye).abs().max().item()


def bench(d: int, n: int, blocks: int, tokens: int, batch: int, dtype, reps: int, scales):
    from megatron_ext.methods.rose.rotation import block_cayley, num_skew_params, rotate_transposed, skew_from_tril

    b = d // blocks
    dev = device()
    g = torch.Generator().manual_seed(0)
    W = (torch.randn(n, d, generator=g) / d ** 0.5).to(dev, dtype)
    x = torch.randn(tokens, batch, d, generator=g).to(dev, dtype).requires_grad_()
    T = (torch.randn(batch, blocks, num_skew_params(b), generator=g) * scales[0]).to(dev).requires_grad_()
    eye = torch.eye(b, device=dev)

    def rotate_gemm(Rt):  # x (s, batch, nb*b), Rt (batch, nb, b, b) -> R^T x, fp32, back to dtype
        xs = x.float().unflatten(-1, (blocks, b))                  # (s, batch, nb, b)
        return torch.einsum("sbkj,bkij->sbki", xs, Rt).flatten(-2).to(dtype)

    def plain():
        return torch.nn.functional.linear(x, W)

    def solve():
        return torch.nn.functional.linear(rotate_transposed(x, T, b, apply="solve"), W)

    def lu_gemm():
        return torch.nn.functional.linear(rotate_transposed(x, T, b, apply="matmul"), W)

    def inverse():
        Rt = 2 * torch.linalg.inv(skew_from_tril(T, b) + eye) - eye
        return torch.nn.functional.linear(rotate_gemm(Rt), W)

    def materialise():  # W^T R^T per sample: (batch, n, d), then one GEMM per sample
        R = block_cayley(T, b)                                      # (batch, nb, b, b)
        Wt = W.float().unflatten(-1, (blocks, b))                   # (n, nb, b)
        W_rot = torch.einsum("nki,bkji->bnkj", Wt, R).flatten(-2)   # row o: (R W)[:, o]
        return torch.einsum("sbd,bnd->sbn", x.float(), W_rot).to(dtype)

    paths = {"no rotation (plain GEMM)": plain, "solve (tokens as right-hand sides)": solve,
             "LU + GEMM (apply='matmul')": lu_gemm, "explicit inverse (linalg.inv) + GEMM": inverse,
             "materialise R W per sample": materialise}
    outputs = {}

    def step(name):
        x.grad = T.grad = None
        y = paths[name]()
        y.float().sum().backward()
        outputs[name] = y.detach()

    times, cpu = interleaved(step, list(paths), reps, cpu=True)
    ref = outputs["solve (tokens as right-hand sides)"].float()
    base = times["solve (tokens as right-hand sides)"]
    keys = {"solve (tokens as right-hand sides)": "solve", "LU + GEMM (apply='matmul')": "matmul",
            "explicit inverse (linalg.inv) + GEMM": "inverse", "materialise R W per sample": "materialise"}
    err = []
    with torch.no_grad():
        for scale in scales:  # the same T's direction at each scale
            Rts = rotations(T.detach() * (scale / scales[0]), b)
            err.append({name: orthogonality_error(Rts[key]) for name, key in keys.items()})
    rows = []
    for name in paths:
        diff = "-" if name not in keys else f"{(outputs[name].float() - ref).abs().max().item():.1e}"
        rows.append([name, f"{times[name] * 1e3:.1f}", f"{times[name] / base:.2f}",
                     f"{cpu[name] / cpu['solve (tokens as right-hand sides)']:.2f}", diff]
                    + [f"{e[name]:.1e}" if name in e else "-" for e in err])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 1],
                    help="tokens per sample sharing one rotation: 512 (training, prefill), 1 (decoding)")
    ap.add_argument("--projections", nargs="+", choices=["q", "down"], default=["q", "down"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--scale", type=float, nargs="+", default=[0.05, 1.0, 10.0],
                    help="standard deviations of T's entries for the orthogonality error (the first also for the timing)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or
                                                             ("bf16" if torch.cuda.is_available() else "fp32")]
    print(f"machine: {machine()}   {load()}   dtype: {dtype} (rotations in fp32)   shape: {args.shape}   "
          f"batch {args.batch}   reps: {args.reps} (median, after 1 warm-up, paths timed in turn)")
    print("time: forward + backward of the projection; ratio against the solve path, same run; "
          "max|y - y_solve|: the path's output against the solve path's; max|R^T R - I|: the rotation "
          "the path applies, per block, at each scale of T\n")
    for name, d, n, blocks in [p for p in SHAPES[args.shape] if p[0] in args.projections]:
        for tokens in args.tokens:
            print(f"projection {name}: {d} -> {n}, {blocks} blocks of {d // blocks}, {tokens} tokens "
                  f"x batch {args.batch} (timed with T ~ N(0, {args.scale[0]}^2))")
            print(table(bench(d, n, blocks, tokens, args.batch, dtype, args.reps, args.scale),
                        ["path", "ms", "ratio", "ratio (CPU time)", "max|y - y_solve|"]
                        + [f"max|R^T R - I|, T sd {s}" for s in args.scale]))
            print()
    print(load())


if __name__ == "__main__":
    main()
