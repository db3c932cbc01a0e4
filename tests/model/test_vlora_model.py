"""VLoRAModel in one process: identity at init, branch form == per-sample materialised weights ==
merged weights, per-image conditioning, what trains, and configuration errors."""

import pytest
import torch

from lora_helpers import VLORA, clone_state, load_base, plain_gpt, randomize, tiny_vlora, vlora_inputs
from megatron_ext.core.llm_config import qwen2_transformer_config
from megatron_ext.core.low_rank import low_rank_layers
from megatron_ext.methods.vlora import VLoRAConfig, VLoRAConfigError

pytestmark = pytest.mark.usefixtures("megatron_single_process")


def test_equipped_blocks_and_generator_shapes():
    model = tiny_vlora()
    assert model.equipped == [2, 4]
    layers = {(l.layer_number, type(l).__name__, tuple(l.adapted)) for l in low_rank_layers(model)}
    assert layers == {(n, cls, parts) for n in (2, 4) for cls, parts in [
        ("VLORAColumnParallelLinear", ("q", "k", "v")), ("VLORARowParallelLinear", ("o",)),
        ("VLORAColumnParallelLinear", ("gate", "up"))]}
    # one generator per weight type, k = 2 queries each, batched; W_v is (batch, in, rank)
    assert model.generator.queries.shape == (5, 2, 32)
    W_v = model.generator(vlora_inputs()["visual_features"])
    assert set(W_v) == {(l, t) for l in (2, 4) for t in ("q", "k", "v", "o", "mlp")}
    assert all(w.shape == (2, 64, 8) for w in W_v.values())
    # "mlp" = W_1 = Megatron's fused fc1: gate and up share the mlp generator's W_v, own W_s each
    cond = model.conditioning_for(vlora_inputs()["visual_features"])
    assert cond[(2, "gate")] is cond[(2, "up")] and (2, "down") not in cond
    # W_s: zero-initialised, one per block and part, r -> out (k, v are GQA-sized)
    qkv = model.language_model.decoder.layers[1].self_attention.linear_qkv
    assert {p: tuple(b.shape) for p, b in qkv.lora_B.items()} == {"q": (64, 8), "k": (32, 8), "v": (32, 8)}
    assert all(b.abs().max() == 0 for l in low_rank_layers(model) for b in l.lora_B.values())


def test_logits_equal_base_llm_at_init():
    model = tiny_vlora()
    plain = plain_gpt(model.config)
    load_base(model, plain)
    b = vlora_inputs()
    with torch.no_grad():
        base = plain(b["input_ids"], b["position_ids"], None)
        ours = model(b["input_ids"], b["position_ids"], None, b["visual_features"])
    assert (ours - base).abs().max() <= 1e-6


def test_branch_equals_per_sample_materialised_weight():
    """y = x W + (x W_v) W_s per sample equals x (W + W_v W_s) with W_v of that sample's image."""
    model = tiny_vlora()
    randomize(model)
    b = vlora_inputs()
    x = torch.randn(5, 2, 64)
    cond = model.conditioning_for(b["visual_features"])
    for name in ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1"):
        layer = model.language_model.decoder.layers[3].get_submodule(name)
        with model.conditioning.use(cond), torch.no_grad():
            out = layer(x)[0]
            for s in range(2):
                A = torch.cat([cond[(4, p)][s] for p in layer.adapted], dim=-1)
                W = layer.weight + layer.delta_weight(A)
                torch.testing.assert_close(out[:, s], x[:, s] @ W.t(), atol=1e-5, rtol=1e-5)


def test_merged_image_equals_branch_form_and_unmerge_restores_the_weights():
    model = tiny_vlora()
    randomize(model, scale=0.2)
    b = vlora_inputs()
    image = b["visual_features"][:1]
    both = image.expand(2, *image.shape[1:])  # two texts, the same image
    before = clone_state(model)
    with torch.no_grad():
        branch = model(b["input_ids"], b["position_ids"], None, both)
        model.merge_image(image)
        merged = model(b["input_ids"], b["position_ids"], None)
        model.unmerge_image()
    torch.testing.assert_close(merged, branch, atol=1e-5, rtol=1e-5)
    assert (branch - model(b["input_ids"], b["position_ids"], None, torch.zeros_like(both))).abs().max() > 1e-3
    for k, v in model.state_dict().items():
        if torch.is_tensor(v):
            torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0, msg=k)


def test_each_sample_sees_its_own_image():
    model = tiny_vlora()
    randomize(model, scale=0.2)
    b = vlora_inputs()
    b["input_ids"][1] = b["input_ids"][0]
    with torch.no_grad():
        logits = model(b["input_ids"], b["position_ids"], None, b["visual_features"])
        swapped = model(b["input_ids"], b["position_ids"], None, b["visual_features"].flip(0))
    assert (logits[0] - logits[1]).abs().max() > 1e-3
    torch.testing.assert_close(swapped, logits.flip(0), atol=1e-5, rtol=1e-5)


def test_frozen_llm_gets_no_gradient_and_generator_and_W_s_do():
    model = tiny_vlora()
    randomize(model)
    model(**vlora_inputs()).mean().backward()
    trainable = {id(p) for p in model.generator_parameters()}
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None and p.grad.abs().max() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_zero_init_W_s_still_learns():
    model = tiny_vlora()
    model(**vlora_inputs()).mean().backward()
    qkv = model.language_model.decoder.layers[1].self_attention.linear_qkv
    assert qkv.lora_B["q"].grad.abs().max() > 0


def test_subset_of_weight_types_leaves_other_parts_plain():
    model = tiny_vlora(weight_types=["q", "o"])
    randomize(model, scale=0.2)
    qkv = model.language_model.decoder.layers[1].self_attention.linear_qkv
    assert qkv.adapted == ["q"] and set(qkv.lora_B) == {"q"}
    assert not low_rank_layers(model.language_model.decoder.layers[1].mlp)
    x = torch.randn(3, 2, 64)
    with model.conditioning.use(model.conditioning_for(vlora_inputs()["visual_features"])), torch.no_grad():
        out = qkv(x)[0]
    base = x @ qkv.weight.t()
    ng, per = model.config.num_query_groups, out.shape[-1] // model.config.num_query_groups
    q_cols = per - 2 * model.config.kv_channels  # [q heads, k, v] per group
    diff = (out - base).unflatten(-1, (ng, per))
    assert diff[..., :q_cols].abs().max() > 1e-4 and diff[..., q_cols:].abs().max() == 0


def _config(**llm):
    return qwen2_transformer_config(dict(VLORA["llm"], **llm))


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight_types=["q", "ffn"]), r"each must be one of"),
    (dict(weight_types=["mlp", "up"]), r"names a projection twice"),
    (dict(layers=[2, 9]), r"subset of 1..4"),
    (dict(generator_width=30, generator_heads=4), r"generator_width=30 is not divisible"),
])
def test_bad_configs_fail_at_start_up(kwargs, message):
    with pytest.raises(VLoRAConfigError, match=message):
        VLoRAConfig(visual_dim=48, **kwargs).validate(_config())


def test_vlora_linear_outside_a_model_says_how_to_run_it():
    model = tiny_vlora()
    with pytest.raises(RuntimeError, match="needs per-image conditioning but none is set"):
        model.language_model.decoder.layers[1].self_attention.linear_qkv(torch.randn(3, 2, 64))


def test_fine_grained_types_put_a_branch_on_down_too():
    model = tiny_vlora(weight_types=["q", "k", "v", "o", "gate", "up", "down"])
    randomize(model)
    fc2 = model.language_model.decoder.layers[1].mlp.linear_fc2
    assert fc2.adapted == ["down"] and model.generator.queries.shape[0] == 7
    cond = model.conditioning_for(vlora_inputs()["visual_features"])
    assert cond[(2, "down")].shape == (2, 128, 8) and cond[(2, "gate")] is not cond[(2, "up")]
    x = torch.randn(4, 2, 128)
    with model.conditioning.use(cond), torch.no_grad():
        out = fc2(x)[0]
    for s in range(2):
        W = fc2.weight + fc2.delta_weight(cond[(2, "down")][s])
        torch.testing.assert_close(out[:, s], x[:, s] @ W.t(), atol=1e-5, rtol=1e-5)
