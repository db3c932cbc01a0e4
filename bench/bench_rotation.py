"""ROSE's per-sample block rotation of one projection, side by side in one run (not a test).

z = (R W)^T x = W^T (R^T x) for a block-diagonal Cayley rotation R = diag(R_i),
R_i = (I + P_i)(I - P_i)^{-1}, R^T = 2 (I + P)^{-1} - I (docs/ARCHITECTURE.md, rules 1-2).

Training (forward + backward w.r.t. x and T, the rotation built from T in the step):
- plain GEMM:           no rotation, the floor;
- built once + GEMM:    R^T blocks from `cayley_transposed` (inv_ex, fp32), applied with one batched
                        GEMM in the activation dtype (`apply_rotation`);
- now:                  what the layers run (`rotations_of(T, tokens)`): the above, or, for blocks
                        wider than the tokens of a sample, A = I + P solved with (`SolvedRotation`);
- before (issue 22):    the previous path, `torch.linalg.solve` of the LU against the block identity
                        then a GEMM, or the tokens as right-hand sides below b tokens per sample;
- materialise R W:      the rotated weight W^T R^T per sample, then one GEMM per sample.
Decoding (forward only, one new token per sample; the image's rotation exists already):
- plain GEMM; apply R^T built at prefill (the export now); before: rebuilt for every token.
Orthogonality: max |R^T R - I| of the rotation `apply_rotation` applies, per block, in fp32 and in
bf16, for T of standard deviation 0.05 (near the identity, where training starts), 1 and 10.

    python -m bench.bench_rotation                               # 7B q, S1 (8 x 128), S3 (2 x 1024), decoding
    python -m bench.bench_rotation --shape 135m --shapes 8x24 8x1 # SmolLM2-135M's q, 64 blocks of 9
"""

from __future__ import annotations

import argparse

import torch

from bench.common import device, interleaved, load, machine, table
from megatron_ext.methods.rose.rotation import (apply_rotation, block_cayley,
                                                cayley_transposed, num_skew_params, rotations_of,
                                                skew_from_tril)

PROJECTIONS = {  # shape -> {projection: (d_in, d_out, blocks)}
    "7b": {"q": (3584, 3584, 64), "down": (18944, 3584, 64)},   # Qwen2.5-7B, the paper's 64 blocks
    "135m": {"q": (576, 576, 64), "down": (1536, 576, 64)},     # SmolLM2-135M, blocks of 9 and 24
    "tiny": {"q": (256, 256, 16), "down": (1024, 256, 16)},
}


def rotate_before(x: torch.Tensor, T: torch.Tensor, b: int) -> torch.Tensor:
    """The rotation as the layers computed it before issue 22 (rotate_transposed, apply="auto"), x
    (s, batch, d) and T (batch, nb, t): one LU per block and sample inside each call, solved against
    the b x b identity then one GEMM when a sample has at least b tokens, else the tokens as
    right-hand sides; fp32."""
    s, batch, d = x.shape
    nb = d // b
    eye = torch.eye(b, device=x.device)
    A = skew_from_tril(T.float(), b) + eye                              # (batch, nb, b, b)
    xs = x.float().reshape(s, batch, nb, b)
    if s >= b:
        Rt = 2.0 * torch.linalg.solve(A, eye.expand_as(A)) - eye
        y = torch.matmul(xs.permute(1, 2, 0, 3), Rt.transpose(-1, -2)).permute(2, 0, 1, 3)
    else:
        xs = xs.permute(1, 2, 3, 0)                                      # (batch, nb, b, s)
        y = (2.0 * torch.linalg.solve(A, xs) - xs).permute(3, 0, 1, 2)
    return y.reshape(s, batch, d).to(x.dtype)


def orthogonality(T: torch.Tensor, b: int, dtype) -> float:
    """max |R^T R - I| per block of the rotation apply_rotation applies in `dtype`: rotating the unit
    rows of every block gives each block's R row by row."""
    nb = T.shape[-2]
    Rt = cayley_transposed(T, b)
    rows = torch.eye(b, device=T.device).repeat(1, nb)[:, None, :].expand(b, T.shape[0], nb * b)
    R = apply_rotation(rows.to(dtype), Rt).float().unflatten(-1, (nb, b)).permute(1, 2, 0, 3)
    return (R.transpose(-1, -2) @ R - torch.eye(b, device=T.device)).abs().max().item()


def bench_training(d, n, blocks, tokens, batch, dtype, reps):
    b = d // blocks
    dev = device()
    g = torch.Generator().manual_seed(0)
    W = (torch.randn(n, d, generator=g) / d ** 0.5).to(dev, dtype)
    x = torch.randn(tokens, batch, d, generator=g).to(dev, dtype).requires_grad_()
    T = (torch.randn(batch, blocks, num_skew_params(b), generator=g) * 0.05).to(dev).requires_grad_()
    linear = torch.nn.functional.linear

    def materialise():
        R = block_cayley(T, b)                                          # (batch, nb, b, b)
        W_rot = torch.einsum("nki,bkji->bnkj", W.float().unflatten(-1, (blocks, b)), R).flatten(-2)
        return torch.einsum("sbd,bnd->sbn", x.float(), W_rot).to(dtype)

    paths = {"plain GEMM (no rotation)": lambda: linear(x, W),
             "built once (inv_ex) + GEMM": lambda: linear(apply_rotation(x, cayley_transposed(T, b)), W),
             # what the layers run: R^T as above, or A = I + P solved with where b > tokens
             "now: rotations_of(T, tokens)": lambda: linear(apply_rotation(x, rotations_of({0: T}, tokens)[0]), W),
             "before: LU solve in the layer": lambda: linear(rotate_before(x, T, b), W),
             "materialise R W per sample": materialise}
    outputs = {}

    def step(name):
        x.grad = T.grad = None
        y = paths[name]()
        y.float().sum().backward()
        outputs[name] = y.detach().float()

    wall, cpu = interleaved(step, list(paths), reps, cpu=True)
    ref = outputs["materialise R W per sample"]
    base = "plain GEMM (no rotation)"
    return [[name, f"{wall[name] * 1e3:.2f}", f"{wall[name] / wall[base]:.2f}",
             f"{cpu[name] / cpu[base]:.2f}", f"{(outputs[name] - ref).abs().max().item():.1e}"
             if name != base else "-"] for name in paths]


def bench_decoding(d, n, blocks, batch, dtype, reps):
    b = d // blocks
    dev = device()
    g = torch.Generator().manual_seed(0)
    W = (torch.randn(n, d, generator=g) / d ** 0.5).to(dev, dtype)
    x = torch.randn(1, batch, d, generator=g).to(dev, dtype)
    T = (torch.randn(batch, blocks, num_skew_params(b), generator=g) * 0.05).to(dev)
    Rt = cayley_transposed(T, b).to(dtype)  # built at prefill, held in the model's dtype
    linear = torch.nn.functional.linear
    paths = {"plain GEMM (no rotation)": lambda: linear(x, W),
             "apply R^T built at prefill: now": lambda: linear(apply_rotation(x, Rt), W),
             "before: rebuilt for every token": lambda: linear(rotate_before(x, T, b), W)}

    def step(name):
        with torch.no_grad():
            paths[name]()

    wall, cpu = interleaved(step, list(paths), reps, cpu=True)
    base = "plain GEMM (no rotation)"
    return [[name, f"{wall[name] * 1e3:.3f}", f"{wall[name] / wall[base]:.2f}", f"{cpu[name] / cpu[base]:.2f}", "-"]
            for name in paths]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(PROJECTIONS), default="7b")
    ap.add_argument("--projections", nargs="+", default=["q"], help="of the shape: q, down")
    ap.add_argument("--shapes", nargs="+", default=["8x128", "2x1024", "1x1", "8x1"],
                    help="SAMPLESxTOKENS; 1 token per sample times decoding (forward only)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--scale", type=float, nargs="+", default=[0.05, 1.0, 10.0],
                    help="standard deviations of T's entries for the orthogonality error")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or
                                                             ("bf16" if torch.cuda.is_available() else "fp32")]
    print(f"machine: {machine()}   {load()}   dtype: {dtype} (rotations built in fp32)   shape: {args.shape}   "
          f"reps: {args.reps} (median after 1 warm-up, paths timed in turn)")
    print("ratio: against the plain GEMM of the same run (wall clock; and this process's CPU time); "
          "max|y - y_ref|: against materialising R W\n")
    for name in args.projections:
        d, n, blocks = PROJECTIONS[args.shape][name]
        b = d // blocks
        for spec in args.shapes:
            batch, tokens = (int(v) for v in spec.split("x"))
            kind = "decoding, forward" if tokens == 1 else "training, forward + backward"
            print(f"projection {name}: {d} -> {n}, {blocks} blocks of {b}, {batch} samples x {tokens} tokens "
                  f"({kind})   {load()}")
            rows = (bench_decoding(d, n, blocks, batch, dtype, args.reps) if tokens == 1
                    else bench_training(d, n, blocks, tokens, batch, dtype, args.reps))
            print(table(rows, ["path", "ms", "ratio", "ratio (CPU time)", "max|y - y_ref|"]) + "\n")
        T = torch.randn(2, blocks, num_skew_params(b), generator=torch.Generator().manual_seed(1)).to(device())
        errs = [[str(dt).removeprefix("torch.")] + [f"{orthogonality(T * s, b, dt):.1e}" for s in args.scale]
                for dt in (torch.float32, torch.bfloat16)]
        print(f"projection {name}: max|R^T R - I| of the applied rotation, per block")
        print(table(errs, ["applied in"] + [f"T sd {s}" for s in args.scale]) + "\n")
    print(load())


if __name__ == "__main__":
    main()
