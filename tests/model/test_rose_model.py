"""ROSEModel in one process: identity at init, rotated layers equal materialised weights,
per-image rotations, gradient flow and configuration errors."""

import pytest
import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

from megatron_ext.methods.rose.config import RoseConfig, RoseConfigError
from megatron_ext.methods.rose.layout import fused_to_parts
from megatron_ext.core.llm_config import qwen2_transformer_config
from megatron_ext.methods.rose.rotated_linear import RotatedLinear
from megatron_ext.methods.rose.rotation import block_cayley, block_diag_matrix, cayley_transposed
from rose_helpers import PRESET, VOCAB, inputs, randomize_generator, tiny_rose

pytestmark = pytest.mark.usefixtures("megatron_single_process")


def _plain_gpt(config):
    torch.manual_seed(1)
    llm = PRESET["llm"]
    return GPTModel(config, get_gpt_layer_local_spec(normalization="RMSNorm"), VOCAB,
                    llm["max_position_embeddings"], position_embedding_type="rope",
                    rotary_base=llm["rope_theta"])


def _load_plain_into_rose(plain, rose_model):
    equipped = {(l - 1, lin) for l in rose_model.equipped
                for lin in ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")}
    sd = fused_to_parts(plain.state_dict(), rose_model.config, equipped)
    missing, unexpected = rose_model.language_model.load_state_dict(sd, strict=True), None
    return missing


def test_equipped_layers_and_projections_come_from_the_spec():
    model = tiny_rose()
    assert model.equipped == [2, 4]
    rotated = {(m.layer_number, p) for m in model.modules() if isinstance(m, RotatedLinear)
               for p in m.rotated}
    assert rotated == {(l, p) for l in (2, 4) for p in ("q", "k", "v", "o", "gate", "up", "down")}
    # unequipped layers keep Megatron's fused linears
    layer1 = model.language_model.decoder.layers[0]
    assert not isinstance(layer1.self_attention.linear_qkv, RotatedLinear)


def test_logits_equal_base_llm_at_init():
    model = tiny_rose()
    plain = _plain_gpt(model.config)
    _load_plain_into_rose(plain, model)
    batch = inputs()
    with torch.no_grad():
        base = plain(batch["input_ids"], batch["position_ids"], None)
        ours = model(batch["input_ids"], batch["position_ids"], None, batch["visual_features"])
    assert (ours - base).abs().max() <= 1e-6
    # and it is the identity because every T is exactly zero (so every built R^T exactly I), not by accident
    assert all(t.abs().max() == 0 for t in model.vrmg(batch["visual_features"]).values())
    assert all(torch.equal(r, torch.eye(r.shape[-1]).expand_as(r))
               for r in model.rotations_for(batch["visual_features"]).values())


def test_fused_qkv_split_into_parts_equals_fused_gemm():
    """Splitting q|k|v and gate|up into parts (unrotated) reproduces Megatron's fused layout."""
    model = tiny_rose()
    plain = _plain_gpt(model.config)
    _load_plain_into_rose(plain, model)
    x = torch.randn(5, 2, model.config.hidden_size)
    for name in ("self_attention.linear_qkv", "mlp.linear_fc1"):
        ours = model.language_model.decoder.layers[1].get_submodule(name)
        ref = plain.decoder.layers[1].get_submodule(name)
        identity = {(2, p): torch.eye(8).expand(2, 8, 8, 8) for p in ours.part_names}
        with model.conditioning.use(identity):
            torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-6, rtol=0)


def test_rotated_layer_equals_materialised_rotated_weight():
    model = tiny_rose()
    layer = model.language_model.decoder.layers[1].self_attention.linear_qkv
    g = torch.Generator().manual_seed(3)
    T = {(2, p): torch.randn(2, 8, 28, generator=g) for p in ("q", "k", "v")}
    x = torch.randn(5, 2, model.config.hidden_size)
    with model.conditioning.use({k: cayley_transposed(t, 8) for k, t in T.items()}), torch.no_grad():
        out = layer(x)[0]
    expected = []
    for p in ("q", "k", "v"):
        R = block_diag_matrix(block_cayley(T[(2, p)], 8))  # (batch, d, d)
        linear = layer.parts[p]
        W_rot = torch.einsum("nd,bed->bne", linear.weight, R)  # (R W)^T = W^T R^T per sample
        expected.append(torch.einsum("sbd,bnd->sbn", x, W_rot) + linear.bias)
    ng = model.config.num_query_groups
    fused = torch.cat([e.unflatten(-1, (ng, -1)) for e in expected], -1).flatten(-2)
    torch.testing.assert_close(out, fused, atol=1e-5, rtol=1e-5)


def test_different_images_get_different_rotations_and_outputs():
    model = tiny_rose()
    randomize_generator(model)
    batch = inputs()
    vis = batch["visual_features"]
    vis[1] = vis[0] + torch.randn_like(vis[0])  # sample 1 sees another image, same text
    batch["input_ids"][1] = batch["input_ids"][0]
    T = model.rotations_for(vis)
    assert all((t[0] - t[1]).abs().max() > 1e-3 for t in T.values())
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["position_ids"], None, vis)
    assert (logits[0] - logits[1]).abs().max() > 1e-3
    # the same image twice gives the same rotation
    T_same = model.rotations_for(torch.stack([vis[0], vis[0]]))
    assert all(torch.equal(t[0], t[1]) for t in T_same.values())


def test_frozen_llm_gets_no_gradient_and_generator_does():
    model = tiny_rose()
    randomize_generator(model)
    for p in model.language_model.parameters():
        p.requires_grad_(False)
    batch = inputs()
    loss = model(**batch).mean()
    loss.backward()
    assert all(p.grad is None for p in model.language_model.parameters())
    grads = {n: p.grad for n, p in model.vrmg.named_parameters()}
    assert all(g is not None for g in grads.values())
    for layer in ("2", "4"):
        assert grads[f"generators.{layer}.to_T.down.weight"].abs().max() > 0
        assert grads[f"generators.{layer}.kv_proj.weight"].abs().max() > 0


def test_zero_init_generator_still_learns():
    """At step 0 R = I, yet the T heads receive gradient, so training can leave the identity."""
    model = tiny_rose()
    loss = model(**inputs()).mean()
    loss.backward()
    assert model.vrmg.generators["2"].to_T["q"].weight.grad.abs().max() > 0


def _config(**llm):
    base = dict(PRESET["llm"])
    base.update(llm)
    return qwen2_transformer_config(base)


@pytest.mark.parametrize("rose, config, message", [
    (dict(blocks=7), {}, r"rose.blocks=7 does not divide the input dimension 64 of projection 'q': "
                         r"set rose.blocks to a divisor of 64"),
    (dict(blocks=8), dict(ffn_hidden_size=100), r"input dimension 100 of projection 'down'"),
    (dict(blocks=64, projections=["q"]), {}, r"leaves blocks of size 1 for projection .q."),
    (dict(layers=[2, 9]), {}, r"rose.layers=\[2, 9\] contains \[9\]: layers are numbered 1..4"),
    (dict(projections=["q", "ffn"]), {}, r"each must be one of"),
    (dict(generator_width=30, generator_heads=4), {}, r"generator_width=30 is not divisible"),
    (dict(every=5), {}, r"no layer is equipped"),
])
def test_bad_configs_fail_at_start_up_with_the_number_to_change(rose, config, message):
    cfg = RoseConfig(visual_dim=48, **{"blocks": 8, **rose})
    with pytest.raises(RoseConfigError, match=message):
        cfg.validate(_config(**config))


def test_blocks_must_divide_by_tensor_parallel_size():
    cfg = RoseConfig(visual_dim=48, blocks=4)
    with pytest.raises(RoseConfigError, match=r"rose.blocks=4 is not divisible by "
                                              r"tensor_model_parallel_size=8.*multiple of 8"):
        cfg.validate(qwen2_transformer_config(dict(PRESET["llm"], num_attention_heads=8,
                                                   num_query_groups=8), tensor_parallel=8))


def test_rotated_linear_outside_a_model_says_how_to_run_it():
    model = tiny_rose()
    layer = model.language_model.decoder.layers[1].self_attention.linear_qkv
    with pytest.raises(RuntimeError, match="needs per-image conditioning but none is set"):
        layer(torch.randn(3, 2, 64))
