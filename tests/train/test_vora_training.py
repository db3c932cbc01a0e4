"""VoRA trained on images from shards, two processes over gloo: S1 (LoRA + patch embedding + aux
heads; LM loss on the caption + block-wise distillation from a tiny AIMv2 teacher) then S2 (the
merged LLM + embedding, from S1's checkpoint), chained at TP=2 and at PP=2 (1F1B; the teacher on
stage 0, block 3's targets sent to stage 1). Each stage's trainable set parameter by parameter,
the teacher unchanged, the distillation loss falls, S2 starts from exactly S1's merged model, the
TP=2 first-step losses equal TP=1's; and a real tokenizer's path: the Qwen2.5 tokenizer (its
151,936-token vocabulary in a tiny preset), TP=2, S1 -> S2 -> the export CLI (megatron_ext.export) ->
transformers loads it, equal logits, generate.

One pair of processes runs every training (Megatron's groups are re-initialised per run)."""

import numpy as np
import pytest
import torch

from distributed import run_distributed
from train_helpers import ROOT

pytestmark = pytest.mark.multiproc

TINY = {s: ROOT / "configs" / "train" / "vora" / f"{s}-tiny.yaml" for s in ("s1", "s2")}

GROUPS = {"s1": {"lora", "embedding", "aux"}, "s2": {"llm", "embedding"}}
S1_STEPS = 6
MAIN_IMAGE = 64
MAIN_TEACHER = f"tiny-aimv2-{MAIN_IMAGE}"
# the tiny VoRA preset with Qwen2.5's vocabulary, room for 64 image tokens + prompt + caption, and
# a student that pairs token by token with the tiny AIMv2 teacher (width 48, 2 blocks, 8-px patches
# at 64 px): LoRA and distillation on blocks 1-2, an 8x8 patch grid
QWEN_PRESET = """base: tiny-vora
llm: {vocab_size: 151936, max_position_embeddings: 256}
vision: {hidden_size: 48}
vora: {vit_layers: 2, patch_size: 8, image_size: 64}
"""


def _overrides(root, name, stage, steps, layout=(), init_from=None, data="shards", teacher="aimv2"):
    # S2 gets the teacher too (as the main job passes it): the merged stage does not load it
    o = [f"log.run_dir={root}/{name}-{stage}", "log.wandb=false", "log.every=1000",
         f"train.steps={steps}", f"checkpoint.every={steps}", "optim.warmup_steps=1", "data.seed=0",
         f"data.manifest={root}/{data}/manifest.json", f"model.vision_weights={root}/{teacher}", *layout]
    if init_from:
        o.append(f"train.init_from={root}/{name}-{init_from}")
    return o


def _run(cfg):
    from megatron.core import parallel_state as ps

    from megatron_ext.train import run
    from megatron_ext.core.param_groups import parameter_groups

    r = run(cfg, keep_model=True)
    model = r.pop("model")
    r["groups"] = {n: g for g, ps_ in parameter_groups(model).items() for n, _ in ps_}
    r.update(tp=ps.get_tensor_model_parallel_rank(), pp=ps.get_pipeline_model_parallel_rank())
    return r, model


def _first_batches(cfg, n):
    """The micro-batches DP rank 0 reads first at DP=1: S2's first step at TP=2 or PP=2."""
    from megatron_ext.data.loader import build_loader
    from megatron_ext.methods import get_method, resolve_preset

    loader = build_loader(cfg, resolve_preset(cfg.model.preset), 0, 1, get_method(cfg.model.method))
    return [loader.next_microbatch() for _ in range(n)]


def _worker(rank, root):
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_ext.data.loader import build_loader
    from megatron_ext.methods import get_method, resolve_preset
    from megatron_ext.training.config import load_config
    from megatron_ext.training.step import eval_loss, reduce_aux

    out = {}
    # TP=1 (DP=2, one sample per micro-batch) takes its first step from TP=2's final S1 weights
    first_tp1 = load_config(str(TINY["s1"]), _overrides(root, "first-tp1", "s1", 1) + [
        f"train.init_from={root}/tp2-s1", "train.micro_batch_size=1", "train.global_batch_size=2"])
    for name, layout in (("tp2", ["parallel.tensor=2"]), ("pp2", ["parallel.pipeline=2"])):
        steps = S1_STEPS if name == "tp2" else 2
        r1, m1 = _run(load_config(str(TINY["s1"]), _overrides(root, name, "s1", steps, layout)))
        if name == "tp2":  # the same weights at TP=2 on the samples of TP=1's first step
            preset = resolve_preset(first_tp1.model.preset)
            m1.begin_step(0.0)
            spec = get_method(first_tp1.model.method)
            out["first-tp2"] = dict(losses=[eval_loss(m1, [build_loader(first_tp1, preset, r, 2, spec)
                                                           .next_microbatch() for r in (0, 1)])],
                                    distill_losses=[reduce_aux(m1)])
        cfg2 = load_config(str(TINY["s2"]), _overrides(root, name, "s2", 2, layout, init_from="s1"))
        # S2's first step, evaluated on S1's final (unmerged) model: the merge on load is exact
        r1["s1_on_s2_batches"] = eval_loss(m1, _first_batches(cfg2, 2))
        r2, _ = _run(cfg2)
        out[(name, "s1")], out[(name, "s2")] = r1, r2
    out["first-tp1"], _ = _run(first_tp1)

    # a real tokenizer's VoRA path: Qwen2.5 tokenizer, vocabulary 151936, TP=2, S1 -> S2
    main = [f"data.tokenizer={root}/qwen", "train.micro_batch_size=1", "train.global_batch_size=2",
            "parallel.tensor=2", f"model.preset={root}/qwen-vora.yaml", f"data.image_size={MAIN_IMAGE}",
            "data.seq_length=48", "data.prompt=Describe the image."]
    out[("main", "s1")], _ = _run(load_config(str(TINY["s1"]), _overrides(
        root, "main", "s1", 1, main, data="shards64", teacher=MAIN_TEACHER)))
    out[("main", "s2")], model = _run(load_config(str(TINY["s2"]), _overrides(
        root, "main", "s2", 1, main, init_from="s1", data="shards64", teacher=MAIN_TEACHER)))
    ids, pixels, mask = _probe(root)
    with torch.no_grad():
        logits = model(ids, torch.arange(ids.shape[1])[None], None, pixel_values=pixels, image_mask=mask)
        out["main_logits"] = gather_from_tensor_model_parallel_region(logits)
    return out


def _probe(root):
    """A fixed input for the exported model: 64 image placeholders, then a prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "qwen")
    text = tok("<|im_start|>user\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    ids = torch.tensor([[tok.convert_tokens_to_ids("<|image_pad|>")] * 64 + text])
    pixels = torch.randn(1, 3, MAIN_IMAGE, MAIN_IMAGE, generator=torch.Generator().manual_seed(5))
    return ids, pixels, torch.arange(ids.shape[1])[None] < 64


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from transformers import Aimv2VisionConfig, Aimv2VisionModel, SiglipImageProcessorPil

    from recaption.tiny import build_tokenizer
    from test_data import make_shards

    root = tmp_path_factory.mktemp("vora")
    torch.manual_seed(0)
    # the teachers: width = the preset's vision.hidden_size, patch = vora.patch_size
    Aimv2VisionModel(Aimv2VisionConfig(hidden_size=40, intermediate_size=80, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=16, patch_size=4)
                     ).save_pretrained(root / "aimv2")
    torch.manual_seed(0)
    Aimv2VisionModel(Aimv2VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=MAIN_IMAGE, patch_size=8)
                     ).save_pretrained(root / MAIN_TEACHER)
    SiglipImageProcessorPil(size={"height": MAIN_IMAGE, "width": MAIN_IMAGE}).save_pretrained(root / MAIN_TEACHER)
    (root / "qwen-vora.yaml").write_text(QWEN_PRESET)
    build_tokenizer().save_pretrained(root / "qwen")
    for name, n in (("shards", 8), ("shards64", 4)):
        (root / name).mkdir()
        make_shards(root / name, n_shards=2, per_shard=n, corrupt=())
    return root, run_distributed(_worker, world_size=2, root=root)


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
@pytest.mark.parametrize("stage", ["s1", "s2"])
def test_trainable_set_parameter_by_parameter(results, layout, stage):
    _, ranks = results
    for out in ranks:
        r = out[(layout, stage)]
        assert r["params"], "no parameters reported"
        for name, (requires_grad, changed) in r["params"].items():
            group = r["groups"][name]
            trains = group in GROUPS[stage]
            assert requires_grad == trains, f"{layout} {stage}: {name} ({group})"
            if r["tp"] == 1 and "word_embeddings" in name:
                continue  # byte captions are ASCII: all in TP rank 0's half of the vocabulary
            assert changed == trains, f"{layout} {stage}: {name} ({group}) trains={trains} changed={changed}"
        groups = {r["groups"][n] for n in r["params"]}
        if stage == "s2":  # merged: no LoRA, no aux heads, no teacher
            assert not groups & {"lora", "aux", "teacher"}, groups
            assert not any(".lora_" in n or ".aux_head." in n for n in r["params"])
        elif r["pp"] == 0:  # the teacher lives on the first stage only, frozen and unchanged
            teacher = [n for n in r["params"] if r["groups"][n] == "teacher"]
            assert teacher and all(r["params"][n] == (False, False) for n in teacher)
        else:
            assert "teacher" not in groups and "aux" in groups  # block 3's aux head on stage 1


def test_distillation_loss_falls_when_overfitting(results):
    root, ranks = results
    r = ranks[0][("tp2", "s1")]
    d = r["distill_losses"]
    assert len(d) == S1_STEPS and all(0 < x < 2 for x in d), d
    assert d[-1] < 0.5 * d[0] and max(d[-3:]) < min(d[:3]), d
    assert r["losses"][-1] < r["losses"][0], r["losses"]
    import json
    records = [json.loads(l) for l in (root / "tp2-s1" / "metrics.jsonl").read_text().splitlines()]
    assert [x["distill_loss"] for x in records] == pytest.approx(d)
    # at PP=2 the reported distillation loss sums stage 0's blocks (1, 2) and stage 1's (3)
    p = ranks[0][("pp2", "s1")]["distill_losses"]
    assert ranks[1][("pp2", "s1")]["distill_losses"] == p and 0.3 < p[0] < 1.5, p


def test_s2_starts_from_s1_with_the_lora_merged(results):
    _, ranks = results
    for layout in ("tp2", "pp2"):
        for out in ranks:
            s1, s2 = out[(layout, "s1")], out[(layout, "s2")]
            assert s2["start"] == 0 and len(s2["losses"]) == 2 and "distill_losses" not in s2
            assert abs(s2["losses"][0] - s1["s1_on_s2_batches"]) < 1e-5, (layout, s2["losses"][0],
                                                                          s1["s1_on_s2_batches"])


def test_tp2_first_step_equals_tp1(results):
    _, ranks = results
    for out in ranks:
        a, b = out["first-tp2"], out["first-tp1"]
        assert abs(a["losses"][0] - b["losses"][0]) < 1e-5, (a["losses"], b["losses"])
        assert abs(a["distill_losses"][0] - b["distill_losses"][0]) < 1e-5


def test_qwen_tokenizer_path_tp2_export_and_generate(results, tmp_path):
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoProcessor

    from megatron_ext.export.cli import main as export_main

    root, ranks = results
    for stage in ("s1", "s2"):
        r = ranks[0][("main", stage)]
        assert len(r["losses"]) == 1 and np.isfinite(r["losses"][0]) and r["losses"][0] > 5, r["losses"]
    assert ranks[0][("main", "s1")]["distill_losses"][0] > 0
    out = tmp_path / "hf"
    # the CLI's main() in this process: tests/model/test_export_checkpoint.py runs `python -m
    # megatron_ext.export` itself, and a Python start with Megatron's imports is ~9 core-s
    export_main(["--checkpoint", str(root / "main-s2"), "--out", str(out), "--tokenizer", str(root / "qwen"),
                 "--image-processor", str(root / MAIN_TEACHER)])
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    assert model.config.method == "vora"
    ids, pixels, _ = _probe(root)
    with torch.no_grad():
        theirs = model(input_ids=ids, pixel_values=pixels).logits
    ours = ranks[0]["main_logits"][..., :theirs.shape[-1]]
    assert (ours - theirs).abs().max() < 1e-4
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    prompt = "<|im_start|>user\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n"
    inputs = processor(images=image, text=prompt)
    assert inputs["pixel_values"].shape == (1, 3, MAIN_IMAGE, MAIN_IMAGE)
    assert torch.equal(inputs["input_ids"], ids)  # the sequence training used: 64 image tokens + prompt
    generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    caption = processor.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    assert generated.shape[1] == ids.shape[1] + 5 and isinstance(caption, str)


def test_vora_config_errors_are_clear(tmp_path):
    from megatron_ext.training.model import check_training
    from megatron_ext.training.config import ConfigError, load_config

    def check(*overrides):
        cfg = load_config(str(TINY["s1"]), [f"data.manifest={tmp_path}/m.json", "model.vision_weights=",
                                            *overrides])
        with pytest.raises(ConfigError) as e:
            check_training(cfg, ["lora", "embedding", "aux"])
        return str(e.value)

    assert "distils its blocks from a ViT teacher" in check()
    assert "not a multiple of VoRA's 4-pixel patch" in check("data.image_size=18", "model.vision_weights=x")
    assert "data.kind=webdataset|dali" in check("data.kind=synthetic")
    (tmp_path / "p.yaml").write_text("base: tiny-vora\nvora: {distill_layers: [], embedding_from_teacher: true}\n")
    assert "vora.distill_layers is empty" in check(f"model.preset={tmp_path}/p.yaml", "model.vision_weights=x")


def test_dali_batches_carry_vora_image_tokens(tmp_path):
    """data.kind=dali gives VoRA the same batch layout as the PIL loader (decoded on the CPU here)."""
    pytest.importorskip("nvidia.dali")
    from megatron_ext.data.loader import build_loader
    from megatron_ext.methods import get_method, resolve_preset
    from megatron_ext.training.config import load_config
    from test_data import make_shards

    make_shards(tmp_path, n_shards=1, per_shard=4, corrupt=())
    cfg = load_config(str(TINY["s1"]), ["data.kind=dali", f"data.manifest={tmp_path}/manifest.json"])
    b = build_loader(cfg, resolve_preset(cfg.model.preset), 0, 1, get_method(cfg.model.method)).next_microbatch()
    n = (16 // 4) ** 2
    assert b["pixel_values"].shape == (2, 3, 16, 16) and b["input_ids"].shape == (2, n + 16)
    assert b["image_mask"][:, :n].all() and not b["image_mask"][:, n:].any()
    assert b["loss_mask"][:, :n - 1].sum() == 0 and b["loss_mask"][:, n - 1].all()  # no prompt
    assert torch.equal(b["position_ids"][0], torch.arange(n + 16))
