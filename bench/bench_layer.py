"""ROSE layer cost against the plain layer, side by side in one run (not a test).

One decoder layer, forward + backward, four ways: the plain Megatron layer and the ROSE layer (7
rotated projections of 64 blocks, its VRMG and the building of its rotations included), each with
everything trainable and with the LLM frozen (S1: only the VRMG trains). The variants are timed in
turn each round (medians), so load from other processes hits them alike. The number that matters
is the S1 ratio, ROSE layer with the LLM frozen / plain frozen layer, at the S1 shape (the default:
8 samples x 128 text tokens, 729 SigLIP-so400m visual tokens, Qwen2.5-7B's layer). Runs on CUDA
when present (bf16, Transformer Engine layers if installed), else on the CPU (fp32).

    python -m bench.bench_layer                                   # 7B layer, S1 shape
    python -m bench.bench_layer --max-ratio 1.25 --json out.json  # exit 1 above the threshold
    python -m bench.bench_layer --shape tiny                      # seconds, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from bench.common import device, interleaved, load, machine, table
from megatron_ext.methods.rose import build_rose
from megatron_ext.methods.rose.layout import fused_to_parts
from megatron_ext.parallel import init_parallel

SHAPES = {
    # Qwen2.5-7B decoder layer, the paper's 64 blocks, SigLIP2-so400m visual width
    "7b": dict(llm=dict(num_layers=1, hidden_size=3584, ffn_hidden_size=18944, num_attention_heads=28,
                        num_query_groups=4, vocab_size=1024, max_position_embeddings=4096,
                        rope_theta=1e6), vision=dict(hidden_size=1152),
               rose=dict(layers=[1], blocks=64, generator_width=512, generator_heads=8)),
    # SmolLM2-135M's layer with the main job's ROSE (configs/model/main-smollm2.yaml: 48 blocks,
    # EfficientNet-Lite0 features; use --tokens 24 --visual-tokens 25 for its shapes)
    "135m": dict(llm=dict(num_layers=1, hidden_size=576, ffn_hidden_size=1536, num_attention_heads=9,
                          num_query_groups=3, vocab_size=1024, max_position_embeddings=4096,
                          rope_theta=1e5), vision=dict(hidden_size=1280),
                 rose=dict(layers=[1], blocks=48, generator_width=256, generator_heads=4)),
    "tiny": dict(llm=dict(num_layers=1, hidden_size=256, ffn_hidden_size=1024, num_attention_heads=8,
                          num_query_groups=2, vocab_size=1024, max_position_embeddings=4096,
                          rope_theta=1e6), vision=dict(hidden_size=128),
                 rose=dict(layers=[1], blocks=16, generator_width=64, generator_heads=4)),
}
VARIANTS = {  # name: (model, LLM trainable)
    "plain layer, all trainable": ("plain", True),
    "ROSE layer (+VRMG), all trainable": ("rose", True),
    "plain layer, frozen": ("plain", False),
    "ROSE layer, frozen LLM (S1)": ("rose", False),
}
S1_RATIO = ("ROSE layer, frozen LLM (S1)", "plain layer, frozen")


def one_layer_models(shape: dict, dtype: torch.dtype):
    """A 1-layer ROSE model and the plain GPTModel with the same weights."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

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
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the T heads start at zero (R = I); a trained generator's are not
        for name, p in sorted(rose.vrmg.named_parameters()):
            if ".to_T." in name:
                p.copy_(torch.randn(p.shape, generator=g).to(p) * 0.02)
    return rose, plain


def bench_layers(shape: dict, tokens: int, batch: int, visual_tokens: int, dtype, reps: int,
                 variants=tuple(VARIANTS)):
    """({variant: median seconds of forward + backward}, {variant: median CPU seconds of this process})."""
    rose, plain = one_layer_models(shape, dtype)
    dev = device()
    llm = shape["llm"]
    ids = torch.randint(0, llm["vocab_size"], (batch, tokens), device=dev)
    pos = torch.arange(tokens, device=dev).expand(batch, tokens)
    vis = torch.randn(batch, visual_tokens, shape["vision"]["hidden_size"], device=dev, dtype=dtype)
    models = {"plain": plain, "rose": rose}

    def step(name):
        which, llm_trains = VARIANTS[name]
        model = models[which]
        for p in model.parameters():
            p.requires_grad_(llm_trains)
        if which == "rose":
            for p in rose.vrmg.parameters():
                p.requires_grad_(True)  # S1 trains the VRMG
        elif not llm_trains:
            plain.embedding.word_embeddings.weight.requires_grad_(True)  # keep a graph to differentiate
        model.zero_grad(set_to_none=True)
        extra = (vis,) if which == "rose" else ()
        model(ids, pos, None, *extra, labels=ids).float().mean().backward()

    return interleaved(step, list(variants), reps, cpu=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--tokens", type=int, default=128, help="text tokens per sample (S1: 128)")
    ap.add_argument("--batch", type=int, default=8, help="samples per micro-batch (S1: 8)")
    ap.add_argument("--visual-tokens", type=int, default=729, help="SigLIP-so400m at 384 px: 729")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                    help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--max-ratio", type=float, default=None,
                    help="exit with status 1 when the S1 ratio (ROSE layer, frozen LLM / plain frozen "
                         "layer) is above this")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--s1-only", action="store_true",
                    help="time only the two variants of the S1 ratio (halves a slow CPU run)")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or
                                                             ("bf16" if torch.cuda.is_available() else "fp32")]
    init_parallel(1, 1)

    shape = SHAPES[args.shape]
    before = load()
    print(f"machine: {machine()}   {before}   dtype: {dtype}   shape: {args.shape}   tokens: {args.tokens} "
          f"x batch {args.batch}   visual tokens: {args.visual_tokens}   blocks: {shape['rose']['blocks']}   "
          f"reps: {args.reps} (medians, variants timed in turn)")
    times, cpu = bench_layers(shape, args.tokens, args.batch, args.visual_tokens, dtype, args.reps,
                              S1_RATIO[::-1] if args.s1_only else tuple(VARIANTS))
    ratio = times[S1_RATIO[0]] / times[S1_RATIO[1]]
    ref = {name: "plain layer, all trainable" if VARIANTS[name][1] else S1_RATIO[1] for name in times}
    rows = [[name, f"{t * 1e3:.1f}", f"{t / times[ref[name]]:.2f}", f"{cpu[name] / cpu[ref[name]]:.2f}"]
            for name, t in times.items()]
    print("\none decoder layer, forward + backward (ratio: against the plain layer of the same kind; "
          "on a CPU also in this process's CPU time, which other processes' load disturbs less)")
    print(table(rows, ["variant", "ms", "ratio", "ratio (CPU time)"]))
    after = load()
    ok = args.max_ratio is None or ratio <= args.max_ratio
    limit = "" if args.max_ratio is None else f" (max {args.max_ratio}: {'ok' if ok else 'ABOVE'})"
    print(f"\nS1 ratio, ROSE layer with the LLM frozen / plain frozen layer: {ratio:.2f}{limit}   {after}")
    if args.json:
        figures = dict(machine=machine(), device=str(device()), dtype=str(dtype), shape=args.shape,
                       tokens=args.tokens, batch=args.batch, visual_tokens=args.visual_tokens,
                       reps=args.reps, ms={n: t * 1e3 for n, t in times.items()}, s1_ratio=ratio,
                       cpu_s={n: t for n, t in cpu.items()},
                       s1_ratio_cpu_time=cpu[S1_RATIO[0]] / cpu[S1_RATIO[1]],
                       max_ratio=args.max_ratio, ok=ok, load_before=before, load_after=after)
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
