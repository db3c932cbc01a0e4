"""S1 -> S2 -> S3 chained at TP=2 and at PP=2 (two processes over gloo, Megatron's 1F1B with
micro-batches), each stage's trainable set checked parameter by parameter; the S1 overfit loss
falls; the TP=2 checkpoint loads at TP=1 and at PP=2 with the same loss; a NaN loss stops the
run with a clear message and keeps the last good checkpoint; a run asks the method registry once
(megatron_ext/training/trainer.py: the spec object reaches the preflight, the pipeline split, the
model, the loader, the validation and the MFU estimate).

All of it runs in one pair of processes (Megatron's groups are re-initialised per run): starting
processes and importing Megatron costs more than the training itself on a small CPU."""

import pytest

from distributed import run_distributed
from train_helpers import ROOT, TINY_S1

VLORA_S1 = ROOT / "configs" / "train" / "s1-vlora-tiny.yaml"

pytestmark = pytest.mark.multiproc

S1_STEPS = 30
GROUPS = {"s1": {"generator"}, "s2": {"generator", "vision"}, "s3": {"generator", "vision", "llm"}}


class _CountingRegistry(dict):
    def __init__(self, entries):
        super().__init__(entries)
        self.lookups = []

    def __getitem__(self, name):
        self.lookups.append(name)
        return super().__getitem__(name)


def _counting_lookups(run, cfg):
    """run(cfg) with the method registry counting its lookups: (result, [names looked up])."""
    from megatron_ext.methods import registry

    plain = registry._REGISTRY
    registry._REGISTRY = counting = _CountingRegistry(plain)
    try:
        return run(cfg, keep_model=True), counting.lookups
    finally:
        registry._REGISTRY = plain


def _stage_overrides(root, layout, stage, steps, init_from=None):
    o = [f"log.run_dir={root}/{layout}-{stage}", "log.wandb=false", "log.every=1000",
         f"train.stage={stage}", f"train.steps={steps}", f"checkpoint.every={steps}"]
    if steps <= 4:
        o += ["optim.warmup_steps=1", "optim.lr=2e-3"]
    o += {"tp2": ["parallel.tensor=2"], "pp2": ["parallel.pipeline=2"]}[layout]
    if init_from:
        o.append(f"train.init_from={root}/{layout}-{init_from}")
    return o


def _worker(rank, root):
    from megatron.core import parallel_state as ps

    from megatron_ext.data.loader import build_loader
    from megatron_ext.methods import get_method, resolve_preset
    from megatron_ext.parallel import init_parallel
    from megatron_ext.train import run
    from megatron_ext.core.param_groups import parameter_groups
    from megatron_ext.training.config import load_config
    from megatron_ext.training.step import eval_loss
    from train_helpers import checkpoint_loss
    from megatron_ext.training.step import NonFiniteLoss

    out = {}
    for layout in ("tp2", "pp2"):
        plan = [("s1", S1_STEPS if layout == "tp2" else 4, None), ("s2", 3, "s1"), ("s3", 3, "s2")]
        for stage, steps, prev in plan:
            cfg = load_config(str(TINY_S1), _stage_overrides(root, layout, stage, steps, prev))
            if (layout, stage) == ("pp2", "s1"):
                r, out["pp2_lookups"] = _counting_lookups(run, cfg)
            else:
                r = run(cfg, keep_model=True)
            model = r.pop("model")
            groups = {n: g for g, ps_ in parameter_groups(model).items() for n, _ in ps_}
            r["groups"] = groups
            if layout == "tp2" and stage == "s3":
                # fixed batches: the first micro-batches of DP rank 0's stream of a fresh loader
                loader = build_loader(cfg, resolve_preset(cfg.model.preset), 0, 1, get_method(cfg.model.method))
                out["eval_batches"] = [loader.next_microbatch() for _ in range(2)]
                out["loss_tp2"] = eval_loss(model, out["eval_batches"])
            r.update(tp=ps.get_tensor_model_parallel_rank(), pp=ps.get_pipeline_model_parallel_rank())
            out[(layout, stage)] = r

    # ROSE S2 for real at PP=2: images from shards (one corrupt), a SigLIP tower on stage 0 whose
    # features reach stage 1's generator; the tower trains with the generator, the LLM stays frozen
    cfg = load_config(str(TINY_S1), [
        f"log.run_dir={root}/pp2-s2-images", "log.wandb=false", "parallel.pipeline=2",
        "train.stage=s2", "train.steps=3", "optim.warmup_steps=1", "optim.lr=2e-3",
        "data.kind=webdataset", f"data.manifest={root}/shards/manifest.json", "data.image_size=32",
        "data.seq_length=16", f"model.vision_weights={root}/siglip", f"train.init_from={root}/pp2-s1"])
    r = run(cfg, keep_model=True)
    model = r.pop("model")
    r["groups"] = {n: g for g, ps_ in parameter_groups(model).items() for n, _ in ps_}
    r["pp"] = ps.get_pipeline_model_parallel_rank()
    out[("pp2-images", "s2")] = r

    # VLoRA pre-training at PP=2: the generator replica on each stage (+ W_s in the LLM's linears)
    cfg = load_config(str(VLORA_S1), [f"log.run_dir={root}/vlora-pp2", "log.wandb=false",
                                      "parallel.pipeline=2", "train.steps=3", "optim.warmup_steps=1"])
    r = run(cfg, keep_model=True)
    model = r.pop("model")
    r["groups"] = {n: g for g, ps_ in parameter_groups(model).items() for n, _ in ps_}
    out[("pp2-vlora", "s1")] = r

    # the TP=2 S3 checkpoint at TP=1 (DP=2) and at PP=2
    for name, layout in (("loss_tp1", []), ("loss_pp2", ["parallel.pipeline=2"])):
        cfg = load_config(str(TINY_S1), layout + [f"log.run_dir={root}/unused"])
        init_parallel(cfg.parallel.tensor, cfg.parallel.pipeline)
        out[name] = checkpoint_loss(cfg, root / "tp2-s3" / "checkpoints", out["eval_batches"])

    # NaN at step 3 of 4 with a checkpoint every 2 steps: stops, the step-2 checkpoint stays latest
    cfg = load_config(str(TINY_S1), [f"log.run_dir={root}/nan", "log.wandb=false", "train.steps=4",
                                     "checkpoint.every=2", "debug.nan_at_step=3",
                                     "optim.warmup_steps=1"])
    try:
        run(cfg)
        out["nan"] = None
    except NonFiniteLoss as e:
        out["nan"] = str(e)
    out.pop("eval_batches")
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from test_data import make_shards

    root = tmp_path_factory.mktemp("stages")
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=32, patch_size=8)
                      ).save_pretrained(root / "siglip")
    (root / "shards").mkdir()
    make_shards(root / "shards", n_shards=2, per_shard=10, corrupt=(4,))
    return root, run_distributed(_worker, world_size=2, root=root)


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
@pytest.mark.parametrize("stage", ["s1", "s2", "s3"])
def test_trainable_set_parameter_by_parameter(results, layout, stage):
    _, ranks = results
    for out in ranks:
        r = out[(layout, stage)]
        assert r["params"], "no parameters reported"
        for name, (requires_grad, changed) in r["params"].items():
            trains = r["groups"][name] in GROUPS[stage]
            assert requires_grad == trains, f"{layout} {stage}: {name} ({r['groups'][name]})"
            assert changed == trains, f"{layout} {stage}: {name} trains={trains} but changed={changed}"
        if stage == "s1":  # the generator is all that trains in S1, and the LLM is all frozen
            assert {r["groups"][n] for n, (g, _) in r["params"].items() if g} == {"generator"}


def test_vlora_pretraining_trains_generator_and_its_ws_at_pp2(results):
    _, ranks = results
    for out in ranks:
        r = out[("pp2-vlora", "s1")]
        trained = {n for n, (g, _) in r["params"].items() if g}
        assert trained and {r["groups"][n] for n in trained} == {"generator"}
        assert any(".lora_B" in n for n in trained)  # W_s lives in the LLM's linears
        assert all(changed == g for g, changed in r["params"].values())
        assert r["losses"][-1] < r["losses"][0]


def test_s2_with_images_trains_the_vision_tower_at_pp2(results):
    import json

    root, ranks = results
    for out in ranks:
        r = out[("pp2-images", "s2")]
        trained = {r["groups"][n] for n, (g, _) in r["params"].items() if g}
        # the tower lives on stage 0 only; each stage has its own generator
        assert trained == ({"generator", "vision"} if r["pp"] == 0 else {"generator"})
        assert all(changed == g for g, changed in r["params"].values())
    records = [json.loads(l) for l in (root / "pp2-s2-images" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(x["loss"] == x["loss"] for x in records)
    assert records[-1]["corrupt_samples"] >= 1  # 24 samples read from 20 incl. the corrupt one


def test_stages_chain_from_the_previous_checkpoint(results):
    root, ranks = results
    for layout in ("tp2", "pp2"):
        r1, r2, r3 = (ranks[0][(layout, s)] for s in ("s1", "s2", "s3"))
        assert r2["start"] == 0 and len(r2["losses"]) == 3
        # S2 starts from S1's final weights: its first loss is near S1's last, not the initial one
        assert abs(r2["losses"][0] - r1["losses"][-1]) < abs(r2["losses"][0] - r1["losses"][0])
        assert all(l == l for l in r3["losses"])
    assert (root / "tp2-s3" / "checkpoints" / "latest").is_file()


def test_a_run_looks_its_method_up_once(results):
    """PP=2 on two ranks: the pipeline split, the preflight, the model builder and the MFU estimate
    all need the method, yet each rank asks the registry once."""
    _, ranks = results
    for out in ranks:
        assert out[("pp2", "s1")]["step"] == 4
        assert out["pp2_lookups"] == ["rose"]


def test_overfitting_loss_falls(results):
    _, ranks = results
    losses = ranks[0][("tp2", "s1")]["losses"]
    assert len(losses) == S1_STEPS
    # S1 moves only the generator of a frozen random LLM: a clear but bounded fall (about 0.3 nats
    # in 30 steps from ln(256) = 5.55 on random 16-token captions)
    assert losses[0] > 5.3 and losses[-1] < losses[0] - 0.2, losses
    assert max(losses[-5:]) < min(losses[:5]), losses


def test_tp2_checkpoint_loads_at_tp1_and_pp2(results):
    _, ranks = results
    for out in ranks:
        assert abs(out["loss_tp1"] - out["loss_tp2"]) < 1e-5, (out["loss_tp1"], out["loss_tp2"])
        assert abs(out["loss_pp2"] - out["loss_tp2"]) < 1e-5, (out["loss_pp2"], out["loss_tp2"])


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(results):
    root, ranks = results
    for out in ranks:
        assert out["nan"] is not None and "step 3: loss is nan" in out["nan"]
        assert "last good checkpoint" in out["nan"] and "step_000002" in out["nan"]
    assert (root / "nan" / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert not (root / "nan" / "checkpoints" / "step_000004").exists()
