"""ROSE at inference: rotations on the activations vs merged into the weights vs the input-space
baseline, through the Hugging Face export (not a test).

A ROSE model (random weights, non-zero rotations) is exported with megatron_ext.export and loaded
with transformers (trust_remote_code), then greedy `generate` runs the same prompt for the same
number of new tokens four ways:
- ROSE, rotations on activations: the export as shipped; the VRMG runs and the rotations R^T are
  built once at the first step, and every equipped projection applies its R^T (one small GEMM) to
  its input at every step;
- ROSE, merged: `merge_vision` folds the image's rotations into the weights (W^T R^T), giving a
  plain Qwen2ForCausalLM; the merge is part of the time to first token (and shown on its own);
- input space (LLaVA-style): the same Qwen2 LLM (the export's base weights) with the visual tokens
  prepended to the prompt as inputs_embeds;
- text only: the same Qwen2 LLM on the prompt alone, the floor.
The vision encoder is excluded on every side: ROSE's tower returns precomputed features (its VRMG
and everything after it are timed), the baseline gets precomputed visual embeddings (encoder and
projector not timed).

One generate of N new tokens per variant and round; a logits processor notes when each token's
logits are ready. Time to first token: from the call (the merge included for the merged variant)
to the first token's logits. Per-token latency: the median gap between consecutive tokens. Medians
over --reps rounds after one warm-up round, the four variants timed in turn each round; ratios
against the input-space baseline at the same number of visual tokens, measured in the same run.

    python -m bench.bench_inference                     # tiny preset, CPU, ~1 min
    python -m bench.bench_inference --preset small      # a 512-wide, 8-layer LLM
    python -m bench.bench_inference --preset main --visual-tokens 25 100   # the main job's shape
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from bench.common import device, load, machine, sync, table, time_fn
from megatron_ext.core.vlm import VisionLanguageModel
from megatron_ext.export.folder import export_model
from megatron_ext.hf.vision_tower import VisionTower
from megatron_ext.methods import build_model, resolve_preset
from megatron_ext.parallel import init_parallel

PRESETS = {
    "tiny": "tiny",
    # a Qwen2-shaped LLM where the decoder, not Python, dominates a decoding step on a CPU
    "small": dict(llm=dict(num_layers=8, hidden_size=512, ffn_hidden_size=1408, num_attention_heads=8,
                           num_query_groups=2, vocab_size=1024, max_position_embeddings=8192,
                           rope_theta=1e6, norm_eps=1e-6),
                  vision=dict(hidden_size=128),
                  rose=dict(every=4, projections=["q", "k", "v", "o", "gate", "up", "down"], blocks=16,
                            generator_width=64, generator_heads=4)),
    "main": "main-smollm2",  # the main job's SmolLM2-135M with its ROSE settings (48 blocks of 12)
    "7b": "qwen2.5-7b-rose",
}
VARIANTS = ("rose-activations", "rose-merged", "input-space", "text-only")
LABELS = {"rose-activations": "ROSE, rotations on activations", "rose-merged": "ROSE, merged into weights",
          "input-space": "input space (visual tokens prepended)", "text-only": "text only (no image)"}


def word_tokenizer(vocab_size: int):
    """A tokenizer with the model's vocabulary (t0, t1, ...): the export needs one to save; the
    bench feeds token ids directly."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", eos_token="t1")


def export_rose(preset: dict, out_dir: str, dtype) -> str:
    """A tiny ROSE VisionLanguageModel with non-zero rotations, exported as a HF folder."""
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig

    torch.manual_seed(0)
    lm = build_model(preset, method="rose", backend="local")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the T heads start at zero (R = I); give them weights
        for name, p in sorted(lm.named_parameters()):
            if ".to_T." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    d_vis = preset["vision"]["hidden_size"]
    # the tower is replaced by precomputed features at load time; a one-layer stand-in to export
    tower = VisionTower.from_config(SiglipVisionConfig(
        hidden_size=d_vis, intermediate_size=d_vis, num_hidden_layers=1, num_attention_heads=4,
        image_size=32, patch_size=8), feature_layer=-1)
    vlm = VisionLanguageModel(lm, tower, lm.rose.equipped_layers(lm.config.num_layers), train_vision=False)
    export_model(vlm, preset["llm"], out_dir, word_tokenizer(preset["llm"]["vocab_size"]),
                 SiglipImageProcessorPil(size={"height": 32, "width": 32}))
    return out_dir


def load_export(out_dir: str, dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True, dtype=dtype).to(device()).eval()
    base = type(model.language_model)(model.config.text_config).to(device(), dtype).eval()  # Qwen2 or Llama
    base.load_state_dict(model.language_model.state_dict())  # the same LLM, nothing rotated
    return model, base


class Variants:
    def __init__(self, model, base, preset: dict, visual: int, prompt: int, dtype):
        dev = device()
        g = torch.Generator().manual_seed(1)
        self.model, self.base = model, base
        self.ids = torch.randint(2, preset["llm"]["vocab_size"], (1, prompt), generator=g).to(dev)
        self.features = torch.randn(1, visual, preset["vision"]["hidden_size"], generator=g).to(dev, dtype)
        self.pixels = torch.zeros(1, 3, 32, 32, device=dev, dtype=dtype)  # ignored: features are precomputed
        # the export's tower is bypassed: every call gets the precomputed features
        model.visual_features = lambda pixel_values, **kw: self.features
        # input space: projected visual tokens (precomputed, LLM width), then the prompt's embeddings
        h = preset["llm"]["hidden_size"]
        visual_embeds = torch.randn(1, visual, h, generator=g).to(dev, dtype) * 0.02
        with torch.no_grad():
            self.embeds = torch.cat([visual_embeds, base.get_input_embeddings()(self.ids)], dim=1)
        self.merged = None

    def merge(self):
        with torch.no_grad():
            self.merged = self.model.merge_vision(self.pixels).eval()

    def generate(self, variant: str, new: int, clock=None):
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        if clock is not None:
            from transformers import LogitsProcessorList
            kw["logits_processor"] = LogitsProcessorList([clock])
        with torch.no_grad():
            if variant == "rose-activations":
                return self.model.generate(input_ids=self.ids, pixel_values=self.pixels, **kw)
            if variant == "rose-merged":  # merging is part of serving a new image
                self.merge()
                return self.merged.generate(input_ids=self.ids, **kw)
            if variant == "input-space":
                return self.base.generate(inputs_embeds=self.embeds, **kw)
            return self.base.generate(input_ids=self.ids, **kw)


class StepClock:
    """A logits processor that notes the time each new token's logits are ready: the first note
    is the time to first token, the gaps between notes are the per-token latencies."""

    def __init__(self):
        self.t0, self.marks = time.perf_counter(), []

    def __call__(self, input_ids, scores):
        sync()
        self.marks.append(time.perf_counter())
        return scores


def latencies(v: Variants, new: int, reps: int) -> dict:
    """{variant: (time to first token, per-token latency)}: medians over reps of one generate each
    (per token: the median gap between consecutive tokens of a generate, then the median over reps);
    one warm-up round, the variants in turn each round."""
    out = {n: ([], []) for n in VARIANTS}
    for r in range(reps + 1):
        for n in VARIANTS:
            sync()
            clock = StepClock()
            v.generate(n, new, clock)
            if r:  # round 0 is the warm-up
                gaps = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
                out[n][0].append(clock.marks[0] - clock.t0)
                out[n][1].append(statistics.median(gaps))
    return {n: (statistics.median(f), statistics.median(p)) for n, (f, p) in out.items()}


def run(args, dtype):
    preset = json.loads(json.dumps(resolve_preset(PRESETS[args.preset])))
    llm = preset["llm"]
    llm["max_position_embeddings"] = max(llm["max_position_embeddings"],
                                         max(args.visual_tokens) + args.prompt_tokens + args.new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        model, base = load_export(export_rose(preset, tmp, dtype), dtype)
    rows, checks = [], []
    for visual in args.visual_tokens:
        v = Variants(model, base, preset, visual, args.prompt_tokens, dtype)
        # the two ROSE paths compute the same model: same logits, same greedy tokens
        with torch.no_grad():
            a = model(input_ids=v.ids, pixel_values=v.pixels).logits
            v.merge()
            b = v.merged(input_ids=v.ids).logits
        same = torch.equal(v.generate("rose-activations", args.new_tokens),
                           v.generate("rose-merged", args.new_tokens))
        checks.append(f"{visual} visual tokens: merged vs activations max|logit diff| "
                      f"{(a - b).abs().max().item():.1e}, same greedy tokens: {same}")
        merge_t = time_fn(v.merge, warmup=1, reps=args.reps)
        lat = latencies(v, args.new_tokens, args.reps)
        first = {n: f for n, (f, _) in lat.items()}
        per = {n: p for n, (_, p) in lat.items()}
        for n in VARIANTS:
            seq = args.prompt_tokens + (visual if n == "input-space" else 0)
            label = LABELS[n] + (f" (merge {merge_t * 1e3:.0f} ms)" if n == "rose-merged" else "")
            rows.append([visual, label, seq, f"{first[n] * 1e3:.1f}", f"{first[n] / first['input-space']:.2f}",
                         f"{per[n] * 1e3:.2f}", f"{per[n] / per['input-space']:.2f}"])
    return rows, checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--visual-tokens", type=int, nargs="+", default=[64, 256, 1024, 4096])
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    args = ap.parse_args()
    if args.new_tokens < 2:
        ap.error("--new-tokens must be at least 2 (per-token latency is measured after the first)")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or
                                                             ("bf16" if torch.cuda.is_available() else "fp32")]
    init_parallel(1, 1)
    print(f"machine: {machine()}   {load()}   dtype: {dtype}   preset: {args.preset}   prompt: "
          f"{args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, batch 1   reps: {args.reps} "
          f"(median after 1 warm-up, variants timed in turn)")
    print("vision encoder excluded on every side (precomputed features); ratios against the input-space "
          "baseline at the same visual tokens, same run\n")
    rows, checks = run(args, dtype)
    print(table(rows, ["visual", "variant", "prefill seq", "first token ms", "x input",
                       "per token ms", "x input"]))
    print("\n" + "\n".join(checks))
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
