"""VLoRA and VoRA layer cost next to the plain Megatron layer, same shapes and tokens (not a test).

Forward+backward of a one-layer model (embedding and output layer included, as in
bench_layer.py) in the pre-training setting of each paper (LLM frozen) and with everything
trainable:
- VLoRA: perceptual LoRA branch on q, k, v, o and mlp (fc1), the paper's rank 64, its generator
  (h_p 512, N = 8 blocks at the 7b shape) run on the visual tokens, per-sample W_v.
- VoRA: LoRA rank 1024 on all seven projections, arbitrary (bidirectional-image) attention mask.

    python -m bench.bench_lora_layers --shape tiny                  # seconds
    python -m bench.bench_lora_layers --shape 7b --tokens 512       # the 7B layer
"""

from __future__ import annotations

import argparse

import torch

from bench.bench_layer import SHAPES  # the ROSE bench's LLM shapes
from bench.common import device, interleaved, machine, table
from megatron_ext.methods import build_model
from megatron_ext.methods.vora import vora_attention_mask
from megatron_ext.parallel import init_parallel

METHOD = {
    "7b": dict(vlora=dict(layers=[1], rank=64, generator_width=512, generator_depth=8, generator_heads=8),
               vora=dict(vit_layers=1, rank=1024, patch_size=14, image_size=448, embed_width=1536),
               teacher_dim=1536),
    "tiny": dict(vlora=dict(layers=[1], rank=16, generator_width=64, generator_depth=2, generator_heads=4),
                 vora=dict(vit_layers=1, rank=64, patch_size=14, image_size=224, embed_width=128),
                 teacher_dim=128),
}


def models(shape_name: str, dtype):
    shape = dict(SHAPES[shape_name])
    m = METHOD[shape_name]
    shape.update(vlora=m["vlora"], vora=dict(m["vora"], teacher_dim=m["teacher_dim"]))
    torch.manual_seed(0)
    plain = build_model(shape, "none", dtype=dtype).to(device())
    built = {"plain": plain}
    for method in ("vlora", "vora"):
        model = build_model(shape, method, dtype=dtype, freeze_llm=False).to(device())
        if model.backend == "local":
            model.language_model.load_state_dict(plain.language_model.state_dict(), strict=False)
        for n, p in model.named_parameters():  # non-zero adapters: the branch does real work
            if ".lora_B." in n:
                torch.nn.init.normal_(p, std=0.01)
        built[method] = model
    return shape, built


def bench(shape_name: str, tokens: int, batch: int, visual_tokens: int, dtype, reps: int):
    shape, built = models(shape_name, dtype)
    llm = shape["llm"]
    dev = device()
    ids = torch.randint(0, llm["vocab_size"], (batch, tokens), device=dev)
    pos = torch.arange(tokens, device=dev).expand(batch, tokens)
    vis = torch.randn(batch, visual_tokens, shape["vision"]["hidden_size"], device=dev, dtype=dtype)
    # VoRA: the first `visual_tokens` positions of each sample are one image's tokens
    image_ids = torch.full((batch, tokens), -1, device=dev)
    for b in range(batch):
        image_ids[b, :visual_tokens] = b
    mask = vora_attention_mask(image_ids)

    run = {
        "plain": lambda m: m(ids, pos, None, labels=ids),
        "vlora": lambda m: m(ids, pos, None, vis, labels=ids),
        "vora": lambda m: m(ids, pos, mask, labels=ids),  # the image tokens' embedding is not timed
    }

    def step(name):
        model = built[name]
        model.zero_grad(set_to_none=True)
        run[name](model).float().mean().backward()

    def freeze(name):
        model = built[name]
        trainable = {"plain": [], "vlora": model.generator_parameters() if name == "vlora" else [],
                     "vora": model.trainable_parameters() if name == "vora" else []}[name]
        keep = {id(p) for p in trainable}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        if name == "plain":  # keep a graph to differentiate
            model.language_model.embedding.word_embeddings.weight.requires_grad_(True)

    rows = []
    times = interleaved(step, list(built), reps)
    for name, label in [("plain", "plain layer"), ("vlora", "VLoRA layer (+generator)"),
                        ("vora", "VoRA layer (LoRA, image mask)")]:
        rows.append([f"{label}, all trainable", f"{times[name] * 1e3:.1f}", f"{times[name] / times['plain']:.2f}"])
    for name in built:
        freeze(name)
    frozen = interleaved(step, list(built), reps)
    for name, label in [("plain", "plain layer, frozen"), ("vlora", "VLoRA, frozen LLM (pre-training)"),
                        ("vora", "VoRA, frozen LLM (pre-training)")]:
        rows.append([label, f"{frozen[name] * 1e3:.1f}", f"{frozen[name] / frozen['plain']:.2f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(METHOD), default="7b")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--visual-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or
                                                             ("bf16" if torch.cuda.is_available() else "fp32")]
    init_parallel(1, 1)
    m = METHOD[args.shape]
    print(f"machine: {machine()}   dtype: {dtype}   shape: {args.shape}   tokens: {args.tokens} x batch "
          f"{args.batch}   visual tokens: {args.visual_tokens}   VLoRA rank {m['vlora']['rank']}, "
          f"VoRA rank {m['vora']['rank']}")
    print("\none decoder layer, forward+backward (ratio: against the plain layer in the same setting)")
    print(table(bench(args.shape, args.tokens, args.batch, args.visual_tokens, dtype, args.reps),
                ["variant", "ms", "ratio"]))


if __name__ == "__main__":
    main()
