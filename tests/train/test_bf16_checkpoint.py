"""bf16 training (the GPU default) saves and resumes for every method whose trainable set mixes
fp32 plain-PyTorch parameters with Megatron's bf16 ones: VLoRA's generator beside its W_s, VoRA's
patch embedding and aux heads beside its LoRA, ROSE S3's generator beside the LLM, LLaVA S3's LLM
(torch-fallback norms). Megatron's optimizers checkpoint only all-16-bit trainable sets; before
training/optim.match_trainable_dtype the save died (distributed optimizer: size mismatch in
get_parameter_state_dp_zero; plain one: "Param id N does not match any model sharded param").

One process (CPU, gloo): 2 steps saved at step 2, then a resume to step 3 whose loaded parameters
are the saved ones bit for bit and whose step trains."""

from __future__ import annotations

import math
import multiprocessing

import pytest
import torch

from train_helpers import ROOT, tiny_cfg

pytestmark = pytest.mark.usefixtures("megatron_single_process")

TRAIN = ROOT / "configs" / "train"
CASES = {  # name: (config, overrides; {assets} is the fixture's directory)
    "vlora-s1": (TRAIN / "s1-vlora-tiny.yaml", []),
    "vlora-s1-plain-optimizer": (TRAIN / "s1-vlora-tiny.yaml", ["optim.distributed=false"]),
    "rose-s3": (TRAIN / "s1-rose-tiny.yaml", ["train.stage=s3"]),
    "vora-s1": (TRAIN / "vora" / "s1-tiny.yaml", ["model.vision_weights={assets}/aimv2",
                                                  "data.manifest={assets}/shards/manifest.json"]),
    "llava-s3": (TRAIN / "llava" / "s1-tiny.yaml", ["train.stage=s3", "model.vision_weights={assets}/siglip",
                                                    "data.manifest={assets}/shards/manifest.json"]),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny AIMv2 teacher (VoRA), a tiny SigLIP tower (LLaVA) and image shards."""
    from transformers import Aimv2VisionConfig, Aimv2VisionModel, SiglipImageProcessorPil, SiglipVisionModel

    from llava_helpers import siglip_config
    from test_data import make_shards

    root = tmp_path_factory.mktemp("bf16-assets")
    torch.manual_seed(0)
    Aimv2VisionModel(Aimv2VisionConfig(hidden_size=40, intermediate_size=80, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=16, patch_size=4)
                     ).save_pretrained(root / "aimv2")
    SiglipVisionModel(siglip_config()).save_pretrained(root / "siglip")
    SiglipImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(root / "siglip")
    (root / "shards").mkdir()
    make_shards(root / "shards", n_shards=2, per_shard=8, corrupt=())
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_run_saves_and_resumes_with_the_saved_parameters(case, assets, tmp_path, monkeypatch):
    from megatron_ext.train import run
    from megatron_ext.training import checkpoint

    config, extra = CASES[case]
    overrides = ["train.dtype=bf16", "optim.warmup_steps=1", "checkpoint.every=2",
                 *(o.format(assets=assets) for o in extra)]
    run_dir = tmp_path / "run"
    children = set(multiprocessing.active_children())  # a direct Megatron save elsewhere may leave one
    first = run(tiny_cfg(run_dir, "train.steps=2", *overrides, config=config), keep_model=True)
    model = first["model"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for n, p in model.named_parameters() if n in trainable} == {torch.bfloat16}
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert checkpoint.latest(run_dir).name == "step_000002"
    assert set(multiprocessing.active_children()) <= children  # the save's writers are gone; no Manager stays

    loaded = {}
    real_load = checkpoint.load

    def load(path, model, *args, **kwargs):  # the parameters as the resume loaded them
        out = real_load(path, model, *args, **kwargs)
        loaded.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return out

    monkeypatch.setattr(checkpoint, "load", load)
    resumed = run(tiny_cfg(run_dir, "train.steps=3", *overrides, config=config), keep_model=True)
    assert resumed["start"] == 2 and resumed["step"] == 3
    assert loaded.keys() == saved.keys()
    for n, p in saved.items():
        assert loaded[n].dtype == p.dtype and torch.equal(loaded[n], p), n
    assert len(resumed["losses"]) == 1 and math.isfinite(resumed["losses"][0])
    changed = {n for n, (_, c) in resumed["params"].items() if c}
    assert changed and changed <= trainable  # step 3 trained, from the loaded optimizer state
    assert checkpoint.latest(run_dir).name == "step_000003"
