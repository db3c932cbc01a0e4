"""ROSE layer cost, side by side, measured in one run (not a test).

1. Forward+backward of one decoder layer with ROSE (7 rotated projections, 64 blocks, VRMG
   included) vs the same plain Megatron layer, same shapes and tokens.
2. One projection under per-sample rotation: rotate the activations (LU, then triangular solves
   or a GEMM with the block inverse) vs materialising R W per sample; time and orthogonality error.

    python bench/bench_layer.py --shape 7b --tokens 512      # the issue's shape
    python bench/bench_layer.py --shape tiny                  # seconds, for a smoke check
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.common import device, machine, table, time_fn  # noqa: E402

SHAPES = {
    # Qwen2.5-7B decoder layer, the paper's 64 blocks, SigLIP2-so400m visual width
    "7b": dict(llm=dict(num_layers=1, hidden_size=3584, ffn_hidden_size=18944, num_attention_heads=28,
                        num_query_groups=4, vocab_size=1024, max_position_embeddings=4096,
                        rope_theta=1e6), vision=dict(hidden_size=1152),
               rose=dict(layers=[1], blocks=64, generator_width=512, generator_heads=8)),
    "tiny": dict(llm=dict(num_layers=1, hidden_size=256, ffn_hidden_size=1024, num_attention_heads=8,
                          num_query_groups=2, vocab_size=1024, max_position_embeddings=4096,
                          rope_theta=1e6), vision=dict(hidden_size=128),
                 rose=dict(layers=[1], blocks=16, generator_width=64, generator_heads=4)),
}


def one_layer_models(shape: dict, dtype: torch.dtype):
    """A 1-layer ROSE model and the plain GPTModel with the same weights."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_ext.methods.rose.layout import fused_to_parts
    from megatron_ext.methods.rose import build_rose

    rose = build_rose(shape, backend="auto", dtype=dtype).to(device())
    llm = shape["llm"]
    if rose.backend == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    plain = GPTModel(rose.config, spec, llm["vocab_size"], llm["max_position_embeddings"],
                     position_embedding_type="rope", rotary_base=llm["rope_theta"]).to(device())
    if rose.backend == "local":  # same weights, so the two differ only by the rotations
        equipped = {(0, l) for l in ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")}
        rose.language_model.load_state_dict(fused_to_parts(plain.state_dict(), rose.config, equipped))
    return rose, plain


def bench_layers(shape: dict, tokens: int, batch: int, visual_tokens: int, dtype, reps: int):
    rose, plain = one_layer_models(shape, dtype)
    llm = shape["llm"]
    ids = torch.randint(0, llm["vocab_size"], (batch, tokens), device=device())
    pos = torch.arange(tokens, device=device()).expand(batch, tokens)
    vis = torch.randn(batch, visual_tokens, shape["vision"]["hidden_size"], device=device(), dtype=dtype)

    def step(model, *extra):
        model.zero_grad(set_to_none=True)
        model(ids, pos, None, *extra, labels=ids).float().mean().backward()

    t_plain = time_fn(lambda: step(plain), reps=reps)
    t_rose = time_fn(lambda: step(rose, vis), reps=reps)
    for p in rose.language_model.parameters():  # S1: only the VRMG trains
        p.requires_grad_(False)
    t_rose_s1 = time_fn(lambda: step(rose, vis), reps=reps)
    for p in plain.parameters():
        p.requires_grad_(False)
    plain.embedding.word_embeddings.weight.requires_grad_(True)  # keep a graph to differentiate
    t_plain_frozen = time_fn(lambda: step(plain), reps=reps)
    return [["plain layer, all trainable", f"{t_plain * 1e3:.1f}", "1.00"],
            ["ROSE layer (+VRMG), all trainable", f"{t_rose * 1e3:.1f}", f"{t_rose / t_plain:.2f}"],
            ["plain layer, frozen", f"{t_plain_frozen * 1e3:.1f}", "1.00"],
            ["ROSE layer, frozen LLM (S1)", f"{t_rose_s1 * 1e3:.1f}", f"{t_rose_s1 / t_plain_frozen:.2f}"]]


def bench_rotation(d: int, n: int, blocks: int, tokens: int, batch: int, dtype, reps: int):
    """One projection W (d -> n) rotated per sample, forward+backward w.r.t. x and T."""
    from megatron_ext.methods.rose.rotation import block_cayley, num_skew_params, rotate_transposed

    b = d // blocks
    dev = device()
    W = torch.randn(n, d, device=dev, dtype=dtype) / d ** 0.5
    x = torch.randn(tokens, batch, d, device=dev, dtype=dtype, requires_grad=True)
    T = (torch.randn(batch, blocks, num_skew_params(b), device=dev) * 0.05).requires_grad_()

    def plain():  # the projection without any rotation: the floor
        torch.nn.functional.linear(x, W).float().sum().backward()

    def solve():
        y = torch.nn.functional.linear(rotate_transposed(x, T, b, apply="solve"), W)
        y.float().sum().backward()

    def matmul():  # same LU, solved against the block identity, then one batched GEMM
        y = torch.nn.functional.linear(rotate_transposed(x, T, b, apply="matmul"), W)
        y.float().sum().backward()

    def materialise():  # (R W)^T per sample, then one GEMM per sample
        R = block_cayley(T, b)                                      # (batch, nb, b, b)
        Wt = W.float().unflatten(-1, (blocks, b))                   # (n, nb, b): W^T blocks
        W_rot = torch.einsum("nki,bkji->bnkj", Wt, R).flatten(-2)   # W^T R^T per sample
        y = torch.einsum("sbd,bnd->sbn", x.float(), W_rot)
        y.sum().backward()

    with torch.no_grad():  # orthogonality of the rotation each path applies, block by block:
        # rotating the row e_i in every block gives row i of each block's R
        rows = torch.eye(b, device=dev).repeat(1, blocks)[:, None, :].expand(b, batch, blocks * b)
        err = {}
        for path in ("solve", "matmul"):
            R = rotate_transposed(rows, T, b, apply=path)[:, 0].unflatten(-1, (blocks, b)).transpose(0, 1)
            err[path] = (R.transpose(-1, -2) @ R - torch.eye(b, device=dev)).abs().max().item()
    tp = time_fn(plain, reps=reps)
    ts = time_fn(solve, reps=reps)
    tmm = time_fn(matmul, reps=reps)
    tm = time_fn(materialise, reps=reps)
    return [["no rotation (plain GEMM)", f"{tp * 1e3:.1f}", f"{tp / ts:.2f}", "-"],
            ["rotate activations: solve", f"{ts * 1e3:.1f}", "1.00", f"{err['solve']:.1e}"],
            ["rotate activations: LU + GEMM", f"{tmm * 1e3:.1f}", f"{tmm / ts:.2f}", f"{err['matmul']:.1e}"],
            ["materialise R W per sample", f"{tm * 1e3:.1f}", f"{tm / ts:.2f}", "-"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--visual-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                    help="default: bf16 on GPU, fp32 on CPU")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or
                                                             ("bf16" if torch.cuda.is_available() else "fp32")]
    from megatron_ext.parallel import init_parallel
    init_parallel(1, 1)

    shape = SHAPES[args.shape]
    llm = shape["llm"]
    print(f"machine: {machine()}   dtype: {dtype}   shape: {args.shape}   tokens: {args.tokens} "
          f"x batch {args.batch}   visual tokens: {args.visual_tokens}   blocks: {shape['rose']['blocks']}")
    print("\n1) one decoder layer, forward+backward")
    print(table(bench_layers(shape, args.tokens, args.batch, args.visual_tokens, dtype, args.reps),
                ["variant", "ms", "ratio"]))
    for name, d, n in [("q (hidden -> hidden)", llm["hidden_size"], llm["hidden_size"]),
                       ("down (ffn -> hidden)", llm["ffn_hidden_size"], llm["hidden_size"])]:
        print(f"\n2) projection {name}: d={d}, n={n}, per-sample rotation, forward+backward")
        print(table(bench_rotation(d, n, shape["rose"]["blocks"], args.tokens, args.batch, dtype, args.reps),
                    ["method", "ms", "ratio", "max|R^T R - I|"]))


if __name__ == "__main__":
    main()
