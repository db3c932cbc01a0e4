"""FLOPs per sample for the base LLM, LLaVA-style input-space injection, ROSE, VLoRA and VoRA.

Conventions (those of the VLoRA paper, section 3.4 and appendix A, so its Table 1 is reproducible):
a multiply-add is 2 FLOPs; attention scores count the full S x S matrix (QK^T and AV: 4 S^2 per
attention width); the decoder's projection count uses the real shapes (GQA, SwiGLU), which the
paper approximates as 24 h^2 per token and block. Training FLOPs = 3 x forward.

    python -m megatron_ext.flops --llm qwen2.5-7b --method rose --visual-tokens 729 --text-tokens 512
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pvcommon.errors import ArgumentParser

# LLM and vision-encoder shapes for the presets the papers use.
LLMS = {
    "qwen2.5-7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128, ffn=18944,
                       vocab=152064, gated=True),
    "vicuna-7b": dict(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, ffn=11008,
                      vocab=32000, gated=True),
}
VISION = {  # width, blocks, MLP width; tokens follow from the image size
    "siglip2-so400m": dict(hidden=1152, layers=27, ffn=4304),
    "clip-vit-l-14": dict(hidden=1024, layers=24, ffn=4096),
    "aimv2-huge": dict(hidden=1536, layers=24, ffn=4096),
}
METHODS = ("base", "llava", "rose", "vlora", "vora")


@dataclass
class Injection:
    """Method settings (defaults: the papers')."""
    every: int = 4                 # equipped block period (ROSE, VLoRA)
    blocks: int = 64               # ROSE diagonal blocks per rotation
    projections: int = 7           # ROSE projections per equipped layer
    generator_width: int = 512     # ROSE VRMG / VLoRA perceptual-weights generator width
    generator_blocks: int = 8      # VLoRA generator decoder blocks
    rank: int = 64                 # VLoRA perceptual-weight rank
    merged: bool = True            # VLoRA: merged weights (the paper's inference/Table 1) or branches
    vora_rank: int = 1024          # VoRA LoRA rank
    vora_blocks: int = 0           # VoRA: blocks carrying LoRA (0 = all); after merge there are none


def _proj_dims(llm: dict) -> dict:
    """(input, output) of each projection of a decoder block."""
    h, q, kv = llm["hidden"], llm["heads"] * llm["head_dim"], llm["kv_heads"] * llm["head_dim"]
    dims = {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "up": (h, llm["ffn"]),
            "down": (llm["ffn"], h)}
    if llm["gated"]:
        dims["gate"] = (h, llm["ffn"])
    return dims


def decoder_projection_flops(llm: dict, tokens: int) -> float:
    return 2.0 * tokens * llm["layers"] * sum(i * o for i, o in _proj_dims(llm).values())


def attention_score_flops(llm: dict, tokens: int) -> float:
    return 4.0 * tokens ** 2 * llm["heads"] * llm["head_dim"] * llm["layers"]


def lm_head_flops(llm: dict, tokens: int) -> float:
    return 2.0 * tokens * llm["hidden"] * llm["vocab"]


def vision_encoder_flops(vision: dict, tokens: int) -> float:
    h = vision["hidden"]
    per_block = 2.0 * tokens * (4 * h * h + 2 * h * vision["ffn"]) + 4.0 * tokens ** 2 * h
    return per_block * vision["layers"]


def rose_flops(llm: dict, inj: Injection, text: int, visual: int, visual_dim: int) -> dict:
    """Rotations (LU per block and image + two triangular solves per token) and the VRMG."""
    equipped = llm["layers"] // inj.every
    dims = list(_proj_dims(llm).values())[: inj.projections]
    rot = 0.0
    for d_in, _ in dims:
        b = d_in // inj.blocks
        rot += inj.blocks * (2.0 / 3.0) * b ** 3 + 2.0 * text * d_in * b
    w, queries = inj.generator_width, inj.projections * inj.blocks
    gen = (2.0 * queries * w * w * 2                  # query and output projections
           + 2.0 * visual * visual_dim * 2 * w        # keys and values of the visual tokens
           + 4.0 * queries * visual * w               # attention
           + sum(2.0 * inj.blocks * w * (d_in // inj.blocks) * (d_in // inj.blocks - 1) / 2
                 for d_in, _ in dims))                # heads to T
    return {"rotations": equipped * rot, "generator": equipped * gen}


def vlora_flops(llm: dict, inj: Injection, text: int, visual: int, visual_dim: int) -> dict:
    """Perceptual weights W_v (h x r) W_s (r x n) per equipped block and weight type."""
    equipped = llm["layers"] // inj.every
    h = llm["hidden"]
    # the paper's five weight types q, k, v, o, mlp; "mlp" is every MLP matrix (gate, up, down),
    # which is how the paper's 24krh^2 counts it (8h^2 of MLP weights per block)
    sizes = list(_proj_dims(llm).values())
    if inj.merged:  # W_v W_s formed and added to W (the paper's inference and Table 1)
        extra = sum(2.0 * i * inj.rank * o + i * o for i, o in sizes)
    else:           # branch (x W_v) W_s per token
        extra = sum(2.0 * text * inj.rank * (i + o) + text * o for i, o in sizes)
    w, n = inj.generator_width, inj.generator_blocks
    gen = n * (2.0 * equipped * 4 * w * w + 4.0 * equipped ** 2 * w       # self-attention
               + 2.0 * equipped * 2 * w * w + 2.0 * visual * visual_dim * 2 * w
               + 4.0 * equipped * visual * w + 2.0 * equipped * 8 * w * w)  # cross-attn, FFN
    gen += 2.0 * equipped * w * h * inj.rank
    return {"perceptual weights": equipped * extra, "generator": gen}


def vora_lora_flops(llm: dict, inj: Injection, tokens: int) -> float:
    blocks = inj.vora_blocks or llm["layers"]
    return 2.0 * tokens * blocks * inj.vora_rank * sum(i + o for i, o in _proj_dims(llm).values())


def breakdown(llm_name: str, method: str, visual_tokens: int, text_tokens: int,
              vision_name: str | None = None, inj: Injection | None = None,
              lm_head: bool = True) -> dict:
    """Forward FLOPs per sample by part."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    llm = LLMS[llm_name]
    inj = inj or Injection()
    vision = VISION[vision_name] if vision_name else None
    vdim = vision["hidden"] if vision else llm["hidden"]
    seq = text_tokens + (visual_tokens if method in ("llava", "vora") else 0)
    out = {"decoder projections": decoder_projection_flops(llm, seq),
           "attention scores": attention_score_flops(llm, seq)}
    if lm_head:
        out["LM head"] = lm_head_flops(llm, text_tokens)
    if method == "rose":
        out.update(rose_flops(llm, inj, text_tokens, visual_tokens, vdim))
    elif method == "vlora":
        out.update(vlora_flops(llm, inj, text_tokens, visual_tokens, vdim))
    elif method == "vora" and not inj.merged:
        out["LoRA"] = vora_lora_flops(llm, inj, seq)
    if vision and method not in ("base", "vora"):  # VoRA has no encoder, only its patch embedding
        out["vision encoder"] = vision_encoder_flops(vision, visual_tokens)
    return out


# dense bf16 peak FLOP/s by device name, for MFU
PEAK_BF16 = {"H100": 989e12, "H800": 989e12, "H200": 989e12, "A100": 312e12, "A800": 312e12}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16.items():
        if key in device_name:
            return value
    return None


def main(argv=None) -> None:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", choices=sorted(LLMS), default="qwen2.5-7b")
    ap.add_argument("--method", choices=METHODS, default="rose")
    ap.add_argument("--visual-tokens", type=int, default=729)
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--vision", choices=sorted(VISION), default=None)
    ap.add_argument("--no-lm-head", action="store_true", help="decoder blocks only (the VLoRA table)")
    ap.add_argument("--training", action="store_true", help="forward + backward (3x forward)")
    args = ap.parse_args(argv)
    if args.visual_tokens < 0 or args.text_tokens < 1:
        ap.error(f"--visual-tokens ({args.visual_tokens}) must be >= 0 and --text-tokens "
                 f"({args.text_tokens}) >= 1")
    parts = breakdown(args.llm, args.method, args.visual_tokens, args.text_tokens, args.vision,
                      lm_head=not args.no_lm_head)
    scale = 3.0 if args.training else 1.0
    total = sum(parts.values()) * scale
    print(f"{args.llm} {args.method}: {args.visual_tokens} visual + {args.text_tokens} text tokens, "
          f"{'training' if args.training else 'forward'} GFLOPs per sample")
    for name, value in parts.items():
        print(f"  {name:22s} {value * scale / 1e9:12.1f}")
    print(f"  {'total':22s} {total / 1e9:12.1f}")


if __name__ == "__main__":
    main()
