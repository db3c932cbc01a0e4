"""What a first CUDA run meets, checked on the CPU (docs/GPU.md): the process group's backends,
collectives on the compute device, the model moved before DDP, fused kernels only where they
import, norms across the local/TE backends, and every RNG stream in a checkpoint."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch
import torch.distributed as dist

from megatron_ext import device as device_mod

pytestmark = pytest.mark.usefixtures("megatron_single_process")


class _Stop(Exception):
    pass


def _cuda_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_cuda_process_group_carries_gloo_for_cpu_tensors(monkeypatch):
    from megatron_ext import parallel

    assert parallel.backend_name() == "gloo"
    _cuda_present(monkeypatch)
    assert parallel.backend_name() == "cpu:gloo,cuda:nccl"

    seen = {}

    def init_process_group(backend, **kwargs):
        seen["backend"] = backend
        raise _Stop

    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.setdefault("device", d))
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(_Stop):
        parallel.init_parallel(1, 1)
    assert seen == {"backend": "cpu:gloo,cuda:nccl", "device": 5}


def test_compute_device_follows_cuda(monkeypatch):
    assert device_mod.compute_device() == torch.device("cpu")
    _cuda_present(monkeypatch)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert device_mod.compute_device() == torch.device("cuda", 3)


def test_host_side_collectives_use_the_compute_device(monkeypatch):
    """The loss, distillation loss and preemption flag reach their all-reduce on the compute device
    (meta stands in for CUDA here)."""
    from megatron_ext.training.preemption import Preemption
    from megatron_ext.training import step

    devices = []

    def all_reduce(t, *args, **kwargs):
        devices.append(t.device.type)
        raise _Stop

    monkeypatch.setattr(device_mod, "compute_device", lambda: torch.device("meta"))
    monkeypatch.setattr(dist, "all_reduce", all_reduce)

    class Distilling:
        def stage_aux_loss(self):
            return 0.5

    for call in (lambda: step.reduce_loss([]), lambda: step.reduce_aux(Distilling()),
                 lambda: Preemption().agreed()):
        with pytest.raises(_Stop):
            call()
    assert devices == ["meta", "meta", "meta"]


def test_place_model_moves_frozen_parts_and_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[0].requires_grad_(False)  # a frozen tower: Megatron's DDP would leave it where it is
    device_mod.place_model(model, torch.device("meta"))
    assert {t.device.type for t in list(model.parameters()) + list(model.buffers())} == {"meta"}


def test_training_places_the_whole_model_before_ddp(tmp_path, monkeypatch):
    """run() hands DDP a model whose every tensor is on the compute device."""
    from megatron_ext import train
    from megatron_ext.training import optim, trainer
    from train_helpers import tiny_cfg

    real = device_mod.place_model
    monkeypatch.setattr(trainer, "place_model", lambda m: real(m, torch.device("meta")))
    seen = {}

    def wrap_ddp(model, cfg):
        seen["devices"] = {t.device.type for t in list(model.parameters()) + list(model.buffers())}
        raise _Stop

    monkeypatch.setattr(optim, "wrap_ddp", wrap_ddp)
    with pytest.raises(_Stop):
        train.run(tiny_cfg(tmp_path / "run", "train.steps=1"))
    assert seen["devices"] == {"meta"}


@pytest.mark.parametrize("kernels", [(), ("scaled_masked_softmax_cuda",),
                                     ("scaled_masked_softmax_cuda", "scaled_upper_triang_masked_softmax_cuda")])
def test_masked_softmax_fusion_only_where_its_kernels_import(monkeypatch, kernels):
    from megatron_ext.core.llm_config import qwen2_transformer_config
    from rose_helpers import PRESET

    assert not qwen2_transformer_config(PRESET["llm"]).masked_softmax_fusion  # CPU
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in kernels else real(name, *a))
    _cuda_present(monkeypatch)
    assert device_mod.fused_softmax_available() == (len(kernels) == 2)


def test_norm_names_map_between_backends():
    from megatron_ext.core.weights import _norm_alias

    qkv = "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight"
    fc1 = "decoder.layers.3.mlp.linear_fc1.layer_norm_weight"
    assert _norm_alias("decoder.layers.3.input_layernorm.weight") == qkv
    assert _norm_alias(qkv) == "decoder.layers.3.input_layernorm.weight"
    assert _norm_alias("decoder.layers.3.pre_mlp_layernorm.weight") == fc1
    assert _norm_alias(fc1) == "decoder.layers.3.pre_mlp_layernorm.weight"
    assert _norm_alias("decoder.final_layernorm.weight") is None


def test_norms_of_equipped_te_layers_load_into_local_layers(tmp_path):
    """Megatron's local spec checkpoints its norms under TE's fused names (linear_qkv.layer_norm_weight);
    a TE layer whose linears a method replaced has a TENorm of its own (input_layernorm.weight).
    Such a checkpoint gives a local-spec model its norm weights instead of leaving them at init."""
    from megatron.core import dist_checkpointing

    from megatron_ext.methods import build_model
    from megatron_ext.core.weights import _norm_alias, load_weights, model_state
    from rose_helpers import PRESET

    torch.manual_seed(0)
    src = build_model(PRESET, method="rose", backend="local")
    with torch.no_grad():
        for n, p in src.named_parameters():
            if "layernorm" in n:
                p.uniform_(0.5, 1.5)
    as_te = {k: dataclasses.replace(v, key=_norm_alias(v.key)) if "layer_norm_weight" in v.key else v
             for k, v in model_state(src).items()}
    assert sum(v.key.endswith("input_layernorm.weight") for v in as_te.values()) == PRESET["llm"]["num_layers"]
    dist_checkpointing.save({"model": as_te}, str(tmp_path))

    torch.manual_seed(1)
    dst = build_model(PRESET, method="rose", backend="local")
    info = load_weights(tmp_path, dst)
    assert info["kept_at_init"] == []
    want = dict(src.named_parameters())
    for n, p in dst.named_parameters():
        torch.testing.assert_close(p, want[n], rtol=0, atol=0, msg=n)


def test_rng_state_restores_cpu_cuda_and_tracker_streams(monkeypatch):
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    from megatron_ext.training.checkpoint import rng_state, set_rng_state

    state = rng_state()
    assert state["cuda"] is None and state["tracker"]
    draws = torch.rand(4)
    with get_cuda_rng_tracker().fork():
        tp_draws = torch.rand(4)
    set_rng_state(state)
    assert torch.equal(torch.rand(4), draws)
    with get_cuda_rng_tracker().fork():
        assert torch.equal(torch.rand(4), tp_draws)
    set_rng_state(state["cpu"])  # a checkpoint from before the CUDA state was saved
    assert torch.equal(torch.rand(4), draws)

    cuda_state = torch.arange(8, dtype=torch.uint8)
    restored = []
    _cuda_present(monkeypatch)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a: cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, *a: restored.append(s))
    saved = rng_state()
    assert torch.equal(saved["cuda"], cuda_state)
    set_rng_state(saved)
    assert torch.equal(restored[-1], cuda_state)


def test_cuda_rng_state_refuses_a_cpu_resume():
    from megatron_ext.training.checkpoint import rng_state, set_rng_state

    state = dict(rng_state(), cuda=torch.zeros(8, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="resume it on a CUDA machine"):
        set_rng_state(state)
