"""FLOPs per sample for the base LLM, LLaVA-style input-space injection and every registered method
(each method's extras: MethodSpec.flops, in its package).

Conventions (those of the VLoRA paper, section 3.4 and appendix A, so its Table 1 is reproducible):
a multiply-add is 2 FLOPs; attention scores count the full S x S matrix (QK^T and AV: 4 S^2 per
attention width); the decoder's projection count uses the real shapes (GQA, SwiGLU), which the
paper approximates as 24 h^2 per token and block. Training FLOPs = 3 x forward.

    python -m megatron_ext.flops --llm qwen2.5-7b --method rose --visual-tokens 729 --text-tokens 512
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Optional

from megatron_ext.core.flops import (attention_score_flops, decoder_projection_flops, lm_head_flops,
                                     vision_encoder_flops)
from megatron_ext.methods import get_method, method_names

from pvcommon.argparser import ArgumentParser

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


@dataclass(frozen=True)
class Counted:
    """How the FLOPs model counts a method: its visual tokens in the LLM's sequence or not, a vision
    encoder in front or not, and its extras (MethodSpec.flops) with its settings."""
    in_sequence: bool
    encoder: bool
    extras: Optional[Callable[..., dict]] = None
    settings: Optional[Callable[[dict], object]] = None


# The papers' analytic baselines (VLoRA's Table 1): the plain LLM, and the input-space model
# (visual tokens through a projector into the sequence). A registered method of the same name
# replaces its entry.
BASELINES = {"base": Counted(in_sequence=False, encoder=False),
             "llava": Counted(in_sequence=True, encoder=True)}


def counted_methods() -> dict[str, Counted]:
    """Every method the FLOPs model counts: the baselines and each registered method with a FLOPs model."""
    out = dict(BASELINES)
    for name in method_names():
        spec = get_method(name)
        if spec.flops is not None:
            out[name] = Counted(spec.visual_tokens_in_sequence, spec.inputs == "features",
                                spec.flops, spec.config)
    return out


def breakdown(llm_name: str, method: str, visual_tokens: int, text_tokens: int,
              vision_name: str | None = None, merged: bool = True, lm_head: bool = True) -> dict:
    """Forward FLOPs per sample by part, with the method's settings at the papers' defaults.
    merged: VLoRA's perceptual weights and VoRA's LoRA folded into the weights (inference)."""
    methods = counted_methods()
    if method not in methods:
        raise ValueError(f"method={method!r}: choose one of {sorted(methods)}")
    count = methods[method]
    llm = LLMS[llm_name]
    vision = VISION[vision_name] if vision_name else None
    vdim = vision["hidden"] if vision else llm["hidden"]
    seq = text_tokens + (visual_tokens if count.in_sequence else 0)
    out = {"decoder projections": decoder_projection_flops(llm, seq),
           "attention scores": attention_score_flops(llm, seq)}
    if lm_head:
        out["LM head"] = lm_head_flops(llm, text_tokens)
    if count.extras is not None:
        settings = count.settings({"vision": {"hidden_size": vdim}})
        out.update(count.extras(llm, settings, text_tokens, visual_tokens, vdim, merged))
    if vision and count.encoder:  # VoRA has no encoder, only its patch embedding
        out["vision encoder"] = vision_encoder_flops(vision, visual_tokens)
    return out


def main(argv=None) -> None:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", choices=sorted(LLMS), default="qwen2.5-7b")
    ap.add_argument("--method", choices=sorted(counted_methods()), default="rose")
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
