"""VoRAModel in one process: identity at init, the image attention mask on a packed sequence,
LoRA merge, block-wise distillation and what trains."""

import pytest
import torch

from lora_helpers import (VORA, ToyTeacher, clone_state, load_base, plain_gpt, randomize, tiny_vora,
                          vora_inputs)
from megatron_ext.core.low_rank import low_rank_layers
from megatron_ext.methods.vora import VisionEmbedding, VoRAConfig, vora_attention_mask

pytestmark = pytest.mark.usefixtures("megatron_single_process")


def _logits(model, b, **kw):
    return model(b["input_ids"], b["position_ids"], None, images=b["images"], image_ids=b["image_ids"], **kw)


def test_lora_on_all_linears_of_the_first_n_vit_blocks_only():
    model = tiny_vora()
    lora = {(l.layer_number, tuple(l.adapted)) for l in low_rank_layers(model)}
    assert lora == {(n, parts) for n in (1, 2, 3)
                    for parts in [("q", "k", "v"), ("o",), ("gate", "up"), ("down",)]}
    rank = VORA["vora"]["rank"]
    qkv = model.language_model.decoder.layers[0].self_attention.linear_qkv
    assert {p: tuple(a.shape) for p, a in qkv.lora_A_weight.items()} == {p: (rank, 64) for p in "qkv"}
    assert all(b.abs().max() == 0 for l in low_rank_layers(model) for b in l.lora_B.values())


def test_logits_equal_base_llm_at_init():
    model = tiny_vora()
    plain = plain_gpt(model.config, VORA)
    load_base(model, plain)
    b = vora_inputs()
    with torch.no_grad():
        text_only = model(b["input_ids"], b["position_ids"])
        assert (text_only - plain(b["input_ids"], b["position_ids"], None)).abs().max() <= 1e-6
        # with images: the base LLM fed the same embedded sequence and the same mask
        ours = _logits(model, b)
        emb = model.embed(b["input_ids"], b["position_ids"], b["images"], b["image_ids"])
        base = plain(b["input_ids"], b["position_ids"], vora_attention_mask(b["image_ids"]), decoder_input=emb)
    assert (ours - base).abs().max() <= 1e-6


def test_mask_on_a_packed_sequence_with_two_images():
    b = vora_inputs()
    ids = b["image_ids"][0]
    visible = ~vora_attention_mask(b["image_ids"])[0, 0]  # (query, key)
    img0, img1 = (ids == 0).nonzero().flatten(), (ids == 1).nonzero().flatten()
    assert len(img0) == 16 and len(img1) == 6 and img0[-1] < img1[0]
    for i in range(ids.numel()):
        if ids[i] >= 0:
            own = (ids == ids[i]).nonzero().flatten()
            expected = torch.zeros_like(visible[i])
            expected[:own[-1] + 1] = True  # all of its image and everything before; nothing after
        else:
            expected = torch.arange(ids.numel()) <= i  # text is causal
        assert torch.equal(visible[i], expected), i
    # sample 1 has no image: plain causal
    assert torch.equal(~vora_attention_mask(b["image_ids"])[1, 0], torch.ones(32, 32, dtype=torch.bool).tril())


def test_mask_is_what_the_model_attends_with():
    """Behaviour, not only the matrix: changing the last patch of image 0 changes the logits at its
    first token (bidirectional) but not at the text before it; changing text after image 0 leaves
    image 0's logits alone."""
    model = tiny_vora()
    randomize(model, scale=0.2)
    b = vora_inputs()
    img0 = (b["image_ids"][0] == 0).nonzero().flatten()
    with torch.no_grad():
        ref = _logits(model, b)[0]
        patched = dict(b, images=[b["images"][0].clone(), b["images"][1]])
        patched["images"][0][:, -4:, -4:] += 1.0  # the last 4x4 patch
        out = _logits(model, patched)[0]
        assert (out[img0[0]] - ref[img0[0]]).abs().max() > 1e-4
        assert (out[:img0[0]] - ref[:img0[0]]).abs().max() == 0
        later = dict(b, input_ids=b["input_ids"].clone())
        later["input_ids"][0, img0[-1] + 1] += 1
        out = _logits(model, later)[0]
        assert (out[:img0[-1] + 1] - ref[:img0[-1] + 1]).abs().max() == 0
        assert (out[img0[-1] + 1:] - ref[img0[-1] + 1:]).abs().max() > 1e-4


def test_merged_equals_unmerged_and_unmerge_restores_the_weights():
    model = tiny_vora()
    randomize(model, scale=0.2)
    b = vora_inputs()
    before = clone_state(model)
    with torch.no_grad():
        ref = _logits(model, b)
        model.merge()
        merged = _logits(model, b)
        model.unmerge()
    torch.testing.assert_close(merged, ref, atol=1e-5, rtol=1e-5)
    for k, v in model.state_dict().items():
        if torch.is_tensor(v):
            torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0, msg=k)


def test_merge_and_unload_leaves_a_plain_gpt_and_the_embedding():
    model = tiny_vora()
    randomize(model, scale=0.2)
    b = vora_inputs()
    with torch.no_grad():
        ref = _logits(model, b)
        model.merge_and_unload()
        merged = _logits(model, b)
    torch.testing.assert_close(merged, ref, atol=1e-5, rtol=1e-5)
    plain = plain_gpt(model.config, VORA)
    names = {n for n, _ in model.named_parameters()}
    assert names == {f"language_model.{n}" for n, _ in plain.named_parameters()} | \
        {f"vision_embedding.{n}" for n, _ in model.vision_embedding.named_parameters()}
    plain.load_state_dict(model.language_model.state_dict())  # a plain Megatron checkpoint again
    with torch.no_grad():
        emb = model.embed(b["input_ids"], b["position_ids"], b["images"], b["image_ids"])
        base = plain(b["input_ids"], b["position_ids"], vora_attention_mask(b["image_ids"]), decoder_input=emb)
    torch.testing.assert_close(base, ref, atol=1e-5, rtol=1e-5)


def test_distillation_loss_falls_and_frozen_parameters_get_no_gradient():
    model = tiny_vora()
    teacher = ToyTeacher()
    b = vora_inputs()
    feats = teacher(b["images"])
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    history = []
    for step in range(6):
        opt.zero_grad()
        lm = _logits(model, b, labels=b["labels"], teacher_features=feats).mean()
        lm.backward()  # the distillation gradient is added at each distilled block
        history.append(model.distill_loss().item())
        if step == 0:
            trainable = {id(p) for p in model.trainable_parameters()}
            for name, p in model.named_parameters():
                if id(p) in trainable:
                    assert p.grad is not None, name
                else:
                    assert not p.requires_grad and p.grad is None, name
        opt.step()
    assert set(model.distill_losses) == {1, 2, 3}
    assert all(a > b for a, b in zip(history, history[1:])) and history[-1] < 0.8 * history[0], history


def test_distillation_gradient_equals_that_of_the_explicit_total_loss():
    b = vora_inputs()
    feats = ToyTeacher()(b["images"])
    grads = []
    for scale in (1.0, 0.0):
        model = tiny_vora()
        randomize(model, scale=0.1)
        model.distill_loss_scale = scale
        lm = _logits(model, b, labels=b["labels"], teacher_features=feats).mean()
        total = lm if scale else lm + model.distill_loss()  # injected vs. explicit L_distill + L_LM
        total.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5, msg=n)
    # the loss is the paper's: mean over blocks of the mean over image tokens of 1 - cos
    model = tiny_vora()
    with torch.no_grad():
        _logits(model, b, teacher_features=feats)
    assert 0 < float(model.distill_loss()) < 2


def test_vision_embedding_any_resolution():
    cfg = VoRAConfig(teacher_dim=8, patch_size=4, image_size=16, embed_width=12)
    emb = VisionEmbedding(**cfg.embedding(), hidden_size=20)
    assert emb(torch.randn(3, 16, 16)).shape == (16, 20)
    assert emb(torch.randn(3, 8, 24)).shape == (12, 20)
    torch.testing.assert_close(emb.positions(4, 4), emb.pos.flatten(0, 1))
    # the interpolated grid is the learned one resampled: constant rows stay constant
    with torch.no_grad():
        emb.pos.copy_(torch.arange(4.0)[:, None, None].expand(4, 4, 12))
    assert torch.allclose(emb.positions(4, 9)[:9], emb.positions(4, 9)[0].expand(9, 12))
    with pytest.raises(ValueError, match="not a multiple of the 4-pixel patch"):
        emb(torch.randn(3, 10, 16))


def test_paper_scale_embedding_is_a_few_million_parameters():
    from megatron_ext.core.presets import CONFIG_DIR, load_preset
    from megatron_ext.methods.vora import vora_config

    preset = load_preset(str(CONFIG_DIR / "qwen2.5-7b-vora.yaml"))  # (the bare name reads ".5-7b-vora" as a suffix)
    emb = VisionEmbedding(**vora_config(preset).embedding(), hidden_size=preset["llm"]["hidden_size"])
    n = sum(p.numel() for p in emb.parameters())
    assert 5e6 < n < 9e6, n  # the paper's "about 6M"; ours reuses AIMv2's 1536-wide patchifier
