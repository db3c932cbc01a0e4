"""Parameter-space vs input-space vision injection: one training step, side by side (not a test).

The same LLM, the same text, the same visual features, as the number of visual tokens grows:
- LLaVA (input space): Megatron-Core's own `LLaVAModel`; the visual tokens pass its 2-layer MLP
  projector and are spliced into the sequence in place of an image token (sequence = text + visual).
- ROSE, VLoRA: `megatron_ext.methods.build_model`; the visual tokens feed the generator, the
  sequence is the text alone.
- VoRA: the image's patches enter the sequence through its embedding (sequence = text + visual),
  LoRA on the first N_vit blocks, bidirectional attention among image tokens, block-wise
  distillation heads against (precomputed) teacher features.
- text only: the base LLM on the text, the floor.

The vision encoder is excluded on every side: LLaVA, ROSE and VLoRA get the same precomputed
features (LLaVAModel's vision tower is the identity, PrecomputedFeatures, so its projector,
splice and LLM are Megatron's code), VoRA has no encoder and its teacher's features are precomputed too. Each
model trains the set of its pre-training stage by default (`--train pretrain`: LLaVA its
projector, ROSE the VRMG, VLoRA the generator and W_s, VoRA LoRA + embedding + aux heads; the LLM
frozen) or everything but the encoder (`--train all`). A step is zero_grad, forward with the
loss, backward, an AdamW step on the trainable set and zero_grad (set_to_none).

Time: wall clock and CPU time of this process (all threads; less disturbed by other processes
on a shared machine), medians of --reps steps per model after one untimed warm-up step (the one
whose peak memory is recorded), the models timed in turn each round (so load from other
processes hits all alike); ratios are to LLaVA at the same number of visual tokens, measured in
the same run. Peak memory: above what was allocated before the step
(see bench.common.PEAK_MEMORY_MEASURE: the CUDA allocator's peak on a GPU, the profiler's record of
CPU allocations on a CPU).

    python -m bench.bench_vs_llava                                   # tiny preset, CPU, ~1 min
    torchrun --nproc-per-node 2 -m bench.bench_vs_llava --preset 7b --tensor 2   # GPUs
"""

from __future__ import annotations

import argparse
import gc
import json
import math

import torch
import torch.nn.functional as F

from bench.common import (device, interleaved, load, machine, peak_memory,
                          peak_memory_measure, table)
from megatron_ext.core.llm_config import gpt_model_kwargs, preset_transformer_config
from megatron_ext.core.specs import decoder_block_spec, linear_classes, resolve_backend
from megatron_ext.methods import build_model, resolve_preset
from megatron_ext.methods.vora import VoRAConfig
from megatron_ext.parallel import init_parallel

# the LLM and vision width come from the ROSE preset; each method's section from its own preset
FAMILIES = {
    "tiny": dict(rose="tiny", vlora="tiny-vlora", vora="tiny-vora"),
    # VLoRA's paper model is Vicuna-7B: its settings (every 4th block, rank 64, h_p 512, N = 8)
    # are applied to the same Qwen2.5-7B here
    "7b": dict(rose="qwen2.5-7b-rose", vlora="vicuna-7b-vlora", vora="qwen2.5-7b-vora"),
}
METHODS = ("llava", "rose", "vlora", "vora", "text")
LABELS = {"llava": "LLaVA (input space)", "rose": "ROSE", "vlora": "VLoRA", "vora": "VoRA",
          "text": "text only (base LLM)"}


def family_preset(name: str, max_tokens: int) -> dict:
    names = FAMILIES[name]
    preset = json.loads(json.dumps(resolve_preset(names["rose"])))
    vlora = resolve_preset(names["vlora"])
    vora = resolve_preset(names["vora"])
    preset["vlora"] = dict(vlora["vlora"])
    preset["vora"] = dict(vora["vora"], teacher_dim=vora["vision"]["hidden_size"])
    llm = preset["llm"]
    llm["max_position_embeddings"] = max(llm["max_position_embeddings"], max_tokens)
    return preset


class PrecomputedFeatures(torch.nn.Module):
    """Stands in for LLaVAModel's vision tower: the 'images' are the encoder's output features."""

    def forward(self, features):
        return features


def build_llava(preset: dict, visual_tokens: int, dtype):
    """Megatron-Core's LLaVAModel on the preset's LLM, with an img_seq_len of `visual_tokens` and
    the vision tower replaced by PrecomputedFeatures (no tower is built)."""
    from unittest import mock

    from megatron.core.models.multimodal import llava_model
    from megatron.core.transformer.mlp import MLPSubmodules

    backend = resolve_backend("auto")
    config = preset_transformer_config(preset, dtype)
    llm, d_vis = preset["llm"], preset["vision"]["hidden_size"]
    # LLaVA-1.5's projector: Linear(d_vis, h) -> GELU -> Linear(h, h), with biases
    projector = preset_transformer_config(preset, dtype, dict(
        ffn_hidden_size=llm["hidden_size"], gated_linear_unit=False, activation_func=F.gelu,
        add_bias_linear=True, bias_activation_fusion=False))
    # the tower is never built: LLaVAModel's CLIPViTModel is PrecomputedFeatures during the
    # construction. siglip has no class token, so img_seq_len = (img_h / patch)^2 = visual_tokens
    side = math.isqrt(visual_tokens)
    if side * side != visual_tokens:
        raise ValueError(f"--visual-tokens {visual_tokens}: LLaVA's image sequence is a square grid")
    vision = preset_transformer_config(preset, dtype, dict(
        num_layers=1, hidden_size=d_vis, ffn_hidden_size=d_vis, num_attention_heads=1,
        num_query_groups=1, kv_channels=d_vis))
    vision.vision_model_type = "siglip"
    classes = linear_classes("local")  # the projector is Megatron's MLP either way
    kwargs = gpt_model_kwargs(llm)
    with mock.patch.object(llava_model, "CLIPViTModel", lambda *a, **k: PrecomputedFeatures()):
        model = llava_model.LLaVAModel(
            config, decoder_block_spec(config, backend), kwargs["vocab_size"],
            kwargs["max_sequence_length"], vision, None, False, projector,
            MLPSubmodules(linear_fc1=classes["column"], linear_fc2=classes["row"]),
            vision_projection_type="mlp", language_position_embedding_type="rope",
            language_rotary_base=kwargs["rotary_base"],
            share_embeddings_and_output_weights=kwargs["share_embeddings_and_output_weights"],
            img_h=14 * side, img_w=14 * side, patch_dim=14)
    assert model.img_seq_len == visual_tokens, model.img_seq_len
    return model


def build(method: str, preset: dict, visual_tokens: int, dtype, train: str):
    """(model, its trainable parameters) in the setting `train`."""
    torch.manual_seed(0)
    if method == "llava":
        model = build_llava(preset, visual_tokens, dtype)
        params = list(model.vision_projection.parameters())
    elif method == "text":
        model = build_model(preset, "none", dtype=dtype)
        params = []
    else:
        extra = {} if method == "rose" else dict(freeze_llm=False)
        model = build_model(preset, method, dtype=dtype, **extra)
        params = {"rose": lambda: list(model.generator.parameters()),
                  "vlora": lambda: model.generator_parameters(),
                  "vora": lambda: model.trainable_parameters()}[method]()
        for n, p in model.named_parameters():  # non-zero adapters: every branch does real work
            if ".lora_B." in n:
                torch.nn.init.normal_(p, std=0.01)
    model = model.to(device())
    if train == "all":
        params = list(model.parameters())
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    if not params:  # text only, pre-training: nothing of the LLM trains; keep a graph to time
        emb = model.language_model.embedding.word_embeddings.weight
        emb.requires_grad_(True)
        params = [emb]
    return model, params


def init_adam_state(optimizer):
    """Create the optimizer's state (exp_avg, exp_avg_sq) with a step on zero gradients, so that
    a step's peak memory does not include that one-off allocation."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


class Inputs:
    """The same text (and visual features) for every model, at one number of visual tokens."""

    def __init__(self, preset: dict, text: int, visual: int, batch: int, dtype):
        dev, llm = device(), preset["llm"]
        g = torch.Generator().manual_seed(0)
        self.text = torch.randint(1, llm["vocab_size"], (batch, text), generator=g).to(dev)
        self.pos = torch.arange(text, device=dev).expand(batch, text)
        self.features = torch.randn(batch, visual, preset["vision"]["hidden_size"], generator=g).to(dev, dtype)
        # LLaVA: an image token before the text; Megatron splices `visual` tokens in its place
        from megatron.core.models.multimodal.llava_model import DEFAULT_IMAGE_TOKEN_INDEX
        self.llava_ids = torch.cat([torch.full((batch, 1), DEFAULT_IMAGE_TOKEN_INDEX, device=dev), self.text], 1)
        self.llava_pos = torch.arange(text + 1, device=dev).expand(batch, text + 1)
        self.llava_labels = torch.cat([self.text, self.text[:, :1]], 1)
        self.llava_loss_mask = torch.ones(batch, text + 1, device=dev)
        # VoRA: the image's tokens, then the text; one square image per sample
        v = preset["vora"]
        side = math.isqrt(visual)
        self.images = [torch.randn(v.get("in_channels", 3), side * v["patch_size"], side * v["patch_size"],
                                   generator=g).to(dev, dtype) for _ in range(batch)]
        self.vora_ids = torch.cat([torch.zeros(batch, visual, dtype=torch.long, device=dev), self.text], 1)
        self.vora_pos = torch.arange(visual + text, device=dev).expand(batch, visual + text)
        self.image_ids = torch.cat([torch.arange(batch, device=dev)[:, None].expand(batch, visual),
                                    torch.full((batch, text), -1, device=dev)], 1)
        distilled = VoRAConfig(**preset["vora"]).distilled()
        self.teacher = [torch.randn(batch * visual, preset["vora"]["teacher_dim"], generator=g).to(dev, dtype)
                        for _ in distilled]

    def loss(self, method: str, model) -> torch.Tensor:
        if method == "llava":
            out, _ = model(self.features, self.llava_ids, self.llava_pos, None, labels=self.llava_labels,
                           loss_mask=self.llava_loss_mask)
        elif method == "vora":
            out = model(self.vora_ids, self.vora_pos, None, images=self.images, image_ids=self.image_ids,
                        teacher_features=self.teacher, labels=self.vora_ids)
        elif method == "text":
            out = model(self.text, self.pos, None, labels=self.text)
        else:
            out = model(self.text, self.pos, None, self.features, labels=self.text)
        return out.float().mean()  # per-token losses -> one number, the same reduction for all

    def sequence(self, method: str) -> int:
        text, visual = self.text.shape[1], self.features.shape[1]
        return text + visual if method in ("llava", "vora") else text


def run(args, dtype) -> list[list]:
    preset = family_preset(args.preset, args.text_tokens + max(args.visual_tokens) + 1)
    methods = list(args.methods)
    rows = []
    # all models at once where memory allows, so that each round times every model in turn;
    # at 7B shapes one model at a time (the baseline is still measured in the same run)
    groups = [methods] if args.preset == "tiny" else [[m] for m in methods]
    results = {}
    for group in groups:
        for visual in args.visual_tokens:
            models, optimizers = {}, {}
            for m in group:
                model, params = build(m, preset, visual, dtype, args.train)
                models[m] = model
                optimizers[m] = init_adam_state(torch.optim.AdamW(params, lr=1e-5))
            inputs = Inputs(preset, args.text_tokens, visual, args.batch, dtype)

            def step(m):  # starts without gradients, so that the peak includes allocating them
                inputs.loss(m, models[m]).backward()
                optimizers[m].step()
                optimizers[m].zero_grad(set_to_none=True)

            # the warm-up step is the one whose peak memory is recorded (Adam's state exists
            # before it, see init_adam_state), then the timed steps
            mem = {m: peak_memory(lambda: step(m)) for m in group}
            times, cpu = interleaved(step, group, args.reps, warmup=0, cpu=True)
            for m in group:
                n = sum(p.numel() for g in optimizers[m].param_groups for p in g["params"])
                results[(m, visual)] = (times[m], cpu[m], mem[m], inputs.sequence(m), n)
            del models, optimizers, inputs
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    for visual in args.visual_tokens:
        base_t, base_c, base_m = results[("llava", visual)][:3] if "llava" in methods else (None,) * 3
        for m in methods:
            t, c, mem, seq, n = results[(m, visual)]
            rows.append([visual, LABELS[m], seq, f"{n / 1e6:.2f}", f"{t * 1e3:.1f}",
                         f"{t / base_t:.2f}" if base_t else "-", f"{c * 1e3:.1f}",
                         f"{c / base_c:.2f}" if base_c else "-", f"{mem / 2**20:.1f}",
                         f"{mem / base_m:.2f}" if base_m else "-"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(FAMILIES), default="tiny")
    ap.add_argument("--tensor", type=int, default=1, help="tensor-parallel size (under torchrun)")
    ap.add_argument("--visual-tokens", type=int, nargs="+", default=[64, 256, 1024, 4096])
    ap.add_argument("--text-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--train", choices=["pretrain", "all"], default="pretrain")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or
                                                             ("bf16" if torch.cuda.is_available() else "fp32")]
    init_parallel(args.tensor, 1)
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if rank0:
        print(f"machine: {machine()}   {load()}   dtype: {dtype}   preset: {args.preset}   "
              f"TP={args.tensor}   text tokens: {args.text_tokens} x batch {args.batch}   "
              f"train: {args.train}   reps: {args.reps} (median; 1 warm-up step, untimed, gives the peak memory)")
        print(f"peak memory: {peak_memory_measure()}")
        print("vision encoder excluded on every side (precomputed features); ratios against LLaVA "
              "at the same visual tokens, same run\n")
    rows = run(args, dtype)
    if rank0:
        print(table(rows, ["visual", "model", "seq", "trainable M", "step ms", "x LLaVA",
                           "CPU ms", "x LLaVA", "peak MiB", "x LLaVA"]))
        print(f"\n{load()}")


if __name__ == "__main__":
    main()
