"""LLaVA trained by the train CLI on images from shards, two processes over gloo: S1 (the projector
alone; a tiny SigLIP frozen) then S2 (projector + tower, from S1's checkpoint), chained at TP=2 and
at PP=2 (1F1B; tower and projector on stage 0). Each stage's trainable set parameter by parameter,
S2 starts from exactly S1's weights, a run killed after a checkpoint resumes to the uninterrupted
run's losses, throughput counts the visual tokens; and the export path: the real Qwen2.5
tokenizer, TP=2, S1 -> S2 -> the export CLI (megatron_ext.export) -> transformers loads it natively
(LlavaForConditionalGeneration), equal logits, the processor builds training's sequence, generate.

One pair of processes runs every training (Megatron's groups are re-initialised per run)."""

import json

import numpy as np
import pytest
import torch
import yaml

from distributed import run_distributed
from train_helpers import ROOT

pytestmark = pytest.mark.multiproc

TINY = {s: ROOT / "configs" / "train" / "llava" / f"{s}-tiny.yaml" for s in ("s1", "s2")}
GROUPS = {"s1": {"projector"}, "s2": {"projector", "vision"}}
PROMPT = "Describe the image."
VISUAL = 16  # 16 px in 4-px patches


def _overrides(root, name, stage, steps, layout=(), init_from=None, extra=()):
    o = [f"log.run_dir={root}/{name}-{stage}", "log.wandb=false", "log.every=1000",
         f"train.steps={steps}", f"checkpoint.every={steps}", "optim.warmup_steps=1", "data.seed=0",
         f"data.manifest={root}/shards/manifest.json", f"model.vision_weights={root}/siglip", *layout, *extra]
    if init_from:
        o.append(f"train.init_from={root}/{name}-{init_from}")
    return o


def _run(path, overrides):
    from megatron.core import parallel_state as ps

    from megatron_ext.train import run
    from megatron_ext.core.param_groups import parameter_groups
    from megatron_ext.training.config import load_config

    r = run(load_config(str(path), overrides), keep_model=True)
    model = r.pop("model")
    r["groups"] = {n: g for g, ps_ in parameter_groups(model).items() for n, _ in ps_}
    r.update(tp=ps.get_tensor_model_parallel_rank(), pp=ps.get_pipeline_model_parallel_rank())
    return r, model


def _first_batches(path, overrides, n):
    from megatron_ext.data.loader import build_loader
    from megatron_ext.methods import get_method, resolve_preset
    from megatron_ext.training.config import load_config

    cfg = load_config(str(path), overrides)
    loader = build_loader(cfg, resolve_preset(cfg.model.preset), 0, 1, get_method(cfg.model.method))
    return [loader.next_microbatch() for _ in range(n)]


def _worker(rank, root):
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_ext.training.step import eval_loss

    out = {}
    for name, layout in (("tp2", ["parallel.tensor=2"]), ("pp2", ["parallel.pipeline=2"])):
        r1, m1 = _run(TINY["s1"], _overrides(root, name, "s1", 4 if name == "tp2" else 2, layout))
        o2 = _overrides(root, name, "s2", 3, layout, init_from="s1", extra=["optim.decay_style=constant"])
        r1["s1_on_s2_batches"] = eval_loss(m1, _first_batches(TINY["s2"], o2, 2))  # S2's first step
        out[(name, "s1")] = r1
        out[(name, "s2")], _ = _run(TINY["s2"], o2)
    # S2 at TP=2 killed after its step-2 checkpoint, then resumed in the same run directory
    cut = _overrides(root, "cut", "s2", 3, ["parallel.tensor=2", "checkpoint.every=2",
                                           f"train.init_from={root}/tp2-s1", "optim.decay_style=constant"])
    try:
        _run(TINY["s2"], cut + ["debug.exit_after_step=2"])
    except SystemExit as e:
        assert e.code == 19
    out["resumed"], _ = _run(TINY["s2"], cut)

    # the export path: Qwen2.5 tokenizer (vocabulary 151680 in a preset file), TP=2, S1 -> S2
    main = [f"model.preset={root}/tiny-llava-qwen.yaml", f"data.tokenizer={root}/qwen", f"data.prompt={PROMPT}",
            "data.seq_length=32", "train.micro_batch_size=1", "train.global_batch_size=2", "parallel.tensor=2"]
    out[("main", "s1")], _ = _run(TINY["s1"], _overrides(root, "main", "s1", 1, main))
    out[("main", "s2")], model = _run(TINY["s2"], _overrides(root, "main", "s2", 1, main, init_from="s1"))
    ids, pixels, image_id = _probe(root)
    out["main_logits"] = gather_from_tensor_model_parallel_region(model(
        ids, torch.arange(ids.shape[1])[None], None, pixel_values=pixels, image_mask=ids == image_id).detach())
    return out


def _probe(root):
    """A fixed input (ids, pixels, the placeholder's id): 16 image placeholders, then the chat
    prompt training used (megatron_ext/data/text.py)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "qwen")
    prompt = "<|image_pad|>" * VISUAL + f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    return torch.tensor([tok(prompt)["input_ids"]]), pixels, tok.convert_tokens_to_ids("<|image_pad|>")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from transformers import SiglipImageProcessorPil, SiglipVisionModel

    from llava_helpers import LLAVA, siglip_config
    from recaption.tiny import build_tokenizer
    from test_data import make_shards

    root = tmp_path_factory.mktemp("llava")
    torch.manual_seed(0)
    SiglipVisionModel(siglip_config()).save_pretrained(root / "siglip")
    SiglipImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(root / "siglip")
    build_tokenizer().save_pretrained(root / "qwen")
    preset = json.loads(json.dumps(LLAVA))
    preset["llm"]["vocab_size"] = 151680  # the real Qwen2.5 vocabulary, padded to a multiple of 128
    (root / "tiny-llava-qwen.yaml").write_text(yaml.safe_dump(preset))
    (root / "shards").mkdir()
    make_shards(root / "shards", n_shards=2, per_shard=8, corrupt=())
    return root, run_distributed(_worker, world_size=2, root=root)


def test_trainable_set_parameter_by_parameter(results):
    runs = [(layout, stage, out[(layout, stage)]) for out in results[1]
            for layout in ("tp2", "pp2") for stage in ("s1", "s2")]
    for layout, stage, r in runs:
        groups = {r["groups"][n] for n in r["params"]}
        # (requires_grad, changed by the run) is (trains, trains) for every parameter of the rank
        wrong = {n: (r["groups"][n], flags) for n, flags in r["params"].items()
                 if flags != (r["groups"][n] in GROUPS[stage],) * 2}
        assert r["params"] and not wrong, f"{layout} {stage}: {wrong}"
        if r["pp"] == 0:  # the tower and the projector live on the first stage only
            assert {"projector", "vision", "unused", "llm"} == groups, groups
        else:
            assert groups == {"llm"}, groups


def test_s2_starts_from_s1_and_the_loss_falls(results):
    _, ranks = results
    for layout in ("tp2", "pp2"):
        for out in ranks:
            s1, s2 = out[(layout, "s1")], out[(layout, "s2")]
            assert s2["start"] == 0 and len(s2["losses"]) == 3
            assert abs(s2["losses"][0] - s1["s1_on_s2_batches"]) < 1e-5, (layout, s2["losses"][0],
                                                                          s1["s1_on_s2_batches"])
    losses = ranks[0][("tp2", "s1")]["losses"]
    assert losses[-1] < losses[0], losses
    assert ranks[0][("tp2", "s1")]["losses"] == ranks[1][("tp2", "s1")]["losses"]  # every rank agrees


def test_killed_after_a_checkpoint_resumes_to_the_same_losses(results):
    _, ranks = results
    for out in ranks:
        r = out["resumed"]
        assert r["start"] == 2 and r["step"] == 3
        assert r["losses"] == out[("tp2", "s2")]["losses"][2:]  # bit-identical, tower included


def test_throughput_counts_the_visual_tokens_of_the_sequence(results):
    root, _ = results
    records = [json.loads(l) for l in (root / "tp2-s1" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for x in records:  # 16 caption tokens + 16 visual tokens per sample
        assert x["tokens_per_s"] == pytest.approx(x["samples_per_s"] * (16 + VISUAL))


def test_export_cli_loads_natively_with_equal_logits_and_generates(results, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from megatron_ext.export.cli import main as export_main

    root, ranks = results
    for stage in ("s1", "s2"):
        r = ranks[0][("main", stage)]
        assert len(r["losses"]) == 1 and np.isfinite(r["losses"][0]) and r["losses"][0] > 5, r["losses"]
    out = tmp_path / "hf"
    # the CLI's main() in this process: tests/model/test_export_checkpoint.py runs `python -m
    # megatron_ext.export` itself, and a Python start with Megatron's imports is ~9 core-s
    export_main(["--checkpoint", str(root / "main-s2"), "--out", str(out), "--tokenizer", str(root / "qwen")])
    model = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    ids, pixels, image_id = _probe(root)
    assert int((ids == image_id).sum()) == VISUAL and bool((ids[0, :VISUAL] == image_id).all())
    with torch.no_grad():
        theirs = model(input_ids=ids, pixel_values=pixels).logits
    ours = ranks[0]["main_logits"][..., :theirs.shape[-1]]
    assert (ours - theirs).abs().max() < 1e-4
    processor = AutoProcessor.from_pretrained(out)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    inputs = processor(images=image, text=processor.apply_chat_template(messages, add_generation_prompt=True),
                       return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 16, 16)
    assert torch.equal(inputs["input_ids"], ids)  # the sequence training used: 16 visual tokens + prompt
    generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 5


def test_llava_config_errors_are_clear(tmp_path):
    from megatron_ext.methods import resolve_preset
    from megatron_ext.methods.llava.training import check
    from megatron_ext.training.config import ConfigError, load_config

    def error(*overrides):
        cfg = load_config(str(TINY["s1"]), [f"data.manifest={tmp_path}/m.json", *overrides])
        with pytest.raises(ConfigError) as e:
            check(cfg, resolve_preset(cfg.model.preset), ["projector"])
        return str(e.value)

    assert "set model.vision_weights to a local SigLIP/CLIP directory" in error()
    assert "data.kind=webdataset|dali" in error("data.kind=synthetic")
    assert "no config.json" in error(f"model.vision_weights={tmp_path}")
