"""What a GPU run turns on for speed, checked where a CPU can see it: the MFU counter's FLOPs by
what trains (a frozen LLM is 2x forward, a tower in front is counted), the overlapped reduce and
gather and gradient-accumulation fusion on CUDA with Transformer Engine, and `auto` choosing TE
only where its PyTorch extension imports."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from megatron_ext.core.flops import (attention_score_flops, decoder_projection_flops, lm_head_flops, llm_shape,
                                     vision_encoder_flops)
from megatron_ext.core.presets import load_preset
from megatron_ext.training.config import load_config


def test_frozen_llm_counts_2x_forward_and_the_method_3x():
    from megatron_ext.methods import get_method
    from megatron_ext.training.mfu import train_flops_per_sample

    preset = load_preset("qwen2.5-7b-rose")
    llm = llm_shape(preset)
    fwd = decoder_projection_flops(llm, 512) + attention_score_flops(llm, 512) + lm_head_flops(llm, 512)
    spec = get_method("rose")
    extras = sum(spec.flops(llm, spec.config(preset), 512, 729, 1152, merged=False).values())
    assert extras > 0
    frozen = train_flops_per_sample(preset, "rose", 512, 729, llm_trains=False)
    full = train_flops_per_sample(preset, "rose", 512, 729, llm_trains=True)
    assert frozen == pytest.approx(2 * fwd + 3 * extras, rel=1e-12)
    assert full == pytest.approx(3 * fwd + 3 * extras, rel=1e-12)
    tower = 1e12
    assert train_flops_per_sample(preset, "rose", 512, 729, llm_trains=False, tower_flops=tower) \
        == pytest.approx(frozen + tower, rel=1e-12)  # frozen tower: its forward only
    assert train_flops_per_sample(preset, "rose", 512, 729, llm_trains=False, tower_flops=tower,
                                  tower_trains=True) == pytest.approx(frozen + 3 * tower, rel=1e-12)


def test_a_runs_flops_follow_its_trainable_groups_and_tower(tmp_path):
    from megatron_ext.training.mfu import run_flops_per_sample, train_flops_per_sample

    tower = tmp_path / "siglip"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps(dict(hidden_size=48, num_hidden_layers=2,
                                                       intermediate_size=96, patch_size=8)))
    cfg = load_config(None, ["model.preset=tiny", f"model.vision_weights={tower}", "data.image_size=32",
                             "data.seq_length=16"])
    preset = load_preset("tiny")
    tower_fwd = vision_encoder_flops(dict(hidden=48, layers=2, ffn=96), 16)
    s1 = run_flops_per_sample(cfg, preset, ["generator"], 16)
    s3 = run_flops_per_sample(cfg, preset, ["generator", "vision", "llm"], 16)
    assert s1 == pytest.approx(train_flops_per_sample(preset, "rose", 16, 16, llm_trains=False) + tower_fwd)
    assert s3 == pytest.approx(train_flops_per_sample(preset, "rose", 16, 16) + 3 * tower_fwd)


def test_overlapped_reduce_and_gather_on_cuda_only_without_pipeline_replicas():
    from megatron_ext.training.optim import overlap_settings

    cfg = load_config(None, [])
    assert overlap_settings(cfg, on_cuda=True, pipeline_replicas=False) == dict(
        overlap_grad_reduce=True, overlap_param_gather=True)
    assert overlap_settings(cfg, on_cuda=False, pipeline_replicas=False) == dict(
        overlap_grad_reduce=False, overlap_param_gather=False)
    assert overlap_settings(cfg, on_cuda=True, pipeline_replicas=True)["overlap_grad_reduce"] is False
    plain = load_config(None, ["optim.distributed=false"])
    assert overlap_settings(plain, on_cuda=True, pipeline_replicas=False) == dict(
        overlap_grad_reduce=True, overlap_param_gather=False)  # the gather needs the distributed optimizer


def test_checkpoint_reads_parameters_after_the_overlapped_gather():
    from megatron_ext.training.optim import synced_parameters

    calls = []

    class Chunk:
        use_forward_hook = True

        def disable_forward_pre_hook(self, param_sync):
            calls.append(("disable", param_sync))

        def enable_forward_pre_hook(self):
            calls.append("enable")

    chunk = Chunk()
    optimizer = types.SimpleNamespace(chained_optimizers=[types.SimpleNamespace(model_chunks=[chunk]),
                                                          types.SimpleNamespace(model_chunks=[chunk])])
    with synced_parameters(optimizer):
        calls.append("save")
    assert calls == [("disable", True), "save", "enable"]  # one chunk, gathered once
    with synced_parameters(types.SimpleNamespace()):  # no overlap: nothing to do
        pass


def test_gradient_accumulation_fusion_with_te_on_cuda(monkeypatch):
    from megatron_ext.training import model as training

    cfg = load_config(None, ["model.backend=te"])
    assert "gradient_accumulation_fusion" not in training.config_overrides(cfg)  # CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training.config_overrides(cfg)["gradient_accumulation_fusion"] is True
    local = load_config(None, ["model.backend=local"])
    assert "gradient_accumulation_fusion" not in training.config_overrides(local)  # needs Apex there


def test_auto_backend_needs_transformer_engines_pytorch_extension(monkeypatch):
    from megatron_ext.core import specs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    top = types.ModuleType("transformer_engine")
    top.__path__ = []  # a package whose compiled PyTorch extension is missing
    monkeypatch.setitem(sys.modules, "transformer_engine", top)
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", None)  # import fails
    assert specs.resolve_backend("auto") == "local"
    ext = types.ModuleType("transformer_engine.pytorch")
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", ext)
    top.pytorch = ext
    assert specs.resolve_backend("auto") == "te"
