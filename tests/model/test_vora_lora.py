"""The LoRA tuner layer (lora.py) on Megatron's own linears: per-part adapters in the fused layout,
scale, merge/unmerge/unload."""

import pytest
import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from lora_helpers import VORA
from megatron_ext.core.fused_layout import fused_parts, unfuse
from megatron_ext.core.llm_config import qwen2_transformer_config
from megatron_ext.core.low_rank import lora_linear
from megatron_ext.methods.vora.lora import LoRAMixin

pytestmark = pytest.mark.usefixtures("megatron_single_process")


def _layer(linear="qkv", rank=4, alpha=None, seed=0):
    config = qwen2_transformer_config(VORA["llm"])
    base, parallel = (RowParallelLinear, "row") if linear in ("proj", "fc2") else (ColumnParallelLinear, "column")
    size_in = {"qkv": 64, "fc1": 64, "proj": 64, "fc2": 128}[linear]
    size_out = {"qkv": 128, "fc1": 256, "proj": 64, "fc2": 64}[linear]
    kwargs = dict(config=config, init_method=config.init_method, bias=linear == "qkv", skip_bias_add=False,
                  tp_comm_buffer_name=linear, parallel=parallel, layer_number=1, rank=rank, alpha=alpha)
    kwargs.update(gather_output=False) if parallel == "column" else kwargs.update(input_is_parallel=True)
    torch.manual_seed(seed)
    layer = lora_linear(base, LoRAMixin)(size_in, size_out, **kwargs)
    with torch.no_grad():
        for b in layer.lora_B.values():
            b.normal_(std=0.1)
    return layer, config


@pytest.mark.parametrize("linear", ["qkv", "fc1", "proj", "fc2"])
def test_each_part_gets_its_own_adapter_in_the_fused_layout(linear):
    layer, config = _layer(linear)
    x = torch.randn(5, 2, layer.weight.shape[1])
    with torch.no_grad():
        delta = layer(x)[0] - torch.nn.functional.linear(x, layer.weight, layer.bias)
    sizes = [n if n is not None else layer.weight.shape[0] for _, n in fused_parts(linear, config)]
    parts = unfuse(delta, sizes, layer.groups)
    for name, got in zip(layer.part_names, parts):
        A, B = layer.lora_A_weight[name], layer.lora_B[name]
        torch.testing.assert_close(got, x @ A.t() @ B.t(), atol=1e-5, rtol=1e-5, msg=name)


def test_alpha_scales_the_branch():
    x = torch.randn(3, 2, 64)
    l1, _ = _layer(alpha=None)
    l2, _ = _layer(alpha=8)  # rank 4: scale 2
    with torch.no_grad():
        base = torch.nn.functional.linear(x, l1.weight, l1.bias)
        torch.testing.assert_close(l2(x)[0] - base, 2 * (l1(x)[0] - base), atol=1e-5, rtol=1e-5)


def test_merge_unmerge_round_trip_and_unload():
    layer, _ = _layer("fc1")
    x = torch.randn(4, 2, 64)
    w0 = layer.weight.detach().clone()
    with torch.no_grad():
        ref = layer(x)[0]
        layer.merge()
        torch.testing.assert_close(layer(x)[0], ref, atol=1e-5, rtol=1e-5)
        with pytest.raises(RuntimeError, match="already merged"):
            layer.merge()
        layer.unmerge()
        torch.testing.assert_close(layer.weight, w0, atol=1e-7, rtol=0)  # float rounding only
        layer.unload()
    assert type(layer) is ColumnParallelLinear
    assert {n for n, _ in layer.named_parameters()} == {"weight"}
    with torch.no_grad():
        torch.testing.assert_close(layer(x)[0], ref, atol=1e-5, rtol=1e-5)


def test_adapter_parameters_carry_megatron_partition_attributes():
    col, _ = _layer("qkv")
    row, _ = _layer("fc2")
    assert col.lora_B["q"].tensor_model_parallel and col.lora_B["q"].partition_dim == 0
    assert not col.lora_A_weight["q"].tensor_model_parallel
    assert row.lora_A_weight["down"].tensor_model_parallel and row.lora_A_weight["down"].partition_dim == 1
    assert not row.lora_B["down"].tensor_model_parallel
