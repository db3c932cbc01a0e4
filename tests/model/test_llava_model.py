"""LLaVA, the input-space baseline, in one process: the text path is exactly the base LLM, the
decoder input at image positions is the projector's output for the tower's features (and the
text embedding elsewhere), the projector equals transformers' LlavaMultiModalProjector, parameter
groups partition the model, and bad inputs fail with a message that says what to change."""

from types import SimpleNamespace

import pytest
import torch

from llava_helpers import IMAGE, IMAGE_TOKENS, LLAVA, forward, llava_inputs, siglip_config, tiny_llava

pytestmark = pytest.mark.usefixtures("megatron_single_process")


def test_text_only_is_exactly_the_base_llm_and_the_image_changes_the_text_logits():
    from megatron_ext.methods import build_model

    model = tiny_llava()
    base = build_model(LLAVA, method="none", backend="local")
    base.language_model.load_state_dict(model.lm.language_model.state_dict())
    b = llava_inputs()
    with torch.no_grad():
        ours = model.lm(b["input_ids"], b["position_ids"], None)
        ref = base(b["input_ids"], b["position_ids"], None)
        with_image = forward(model, b, labels=False)
        other = forward(model, dict(b, pixel_values=torch.randn_like(b["pixel_values"])), labels=False)
    assert torch.equal(ours, ref)
    assert with_image.shape == (2, IMAGE_TOKENS + 8, LLAVA["llm"]["vocab_size"])
    text = slice(IMAGE_TOKENS, None)
    assert (with_image[:, text] - ours[:, text]).abs().max() > 1e-3  # the text attends to the image
    assert (other[:, text] - with_image[:, text]).abs().max() > 1e-3
    with torch.no_grad():  # per-token loss: (batch, seq)
        assert forward(model, b).shape == b["input_ids"].shape


def test_decoder_input_is_the_projected_features_at_image_positions_and_text_elsewhere():
    model = tiny_llava()
    b = llava_inputs()
    seen = {}

    def keep(module, args, kwargs):
        seen["x"] = kwargs["hidden_states"].detach().clone()

    hook = model.lm.language_model.decoder.register_forward_pre_hook(keep, with_kwargs=True)
    with torch.no_grad():
        forward(model, b, labels=False)
        feats = model.vision(b["pixel_values"])
        tokens = model.lm.projector(feats)
        text = model.lm.language_model.embedding(input_ids=b["input_ids"], position_ids=b["position_ids"])
    hook.remove()
    x = seen["x"]  # (seq, batch, hidden)
    assert feats.shape == (2, IMAGE_TOKENS, LLAVA["vision"]["hidden_size"])
    torch.testing.assert_close(x[:IMAGE_TOKENS].transpose(0, 1), tokens, rtol=0, atol=0)
    torch.testing.assert_close(x[IMAGE_TOKENS:], text[IMAGE_TOKENS:], rtol=0, atol=0)


def test_projector_equals_transformers_llava_projector():
    from transformers import LlavaConfig, Qwen2Config
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    lm = tiny_llava(with_tower=False)
    ref = LlavaMultiModalProjector(LlavaConfig(
        vision_config=siglip_config(), text_config=Qwen2Config(hidden_size=LLAVA["llm"]["hidden_size"]),
        projector_hidden_act="gelu", multimodal_projector_bias=True))
    ref.load_state_dict(lm.projector.state_dict())
    x = torch.randn(2, 5, LLAVA["vision"]["hidden_size"])
    with torch.no_grad():
        torch.testing.assert_close(lm.projector(x), ref(x), rtol=0, atol=1e-6)


def test_parameter_groups_partition_the_model():
    from megatron_ext.methods.llava.config import STAGES
    from megatron_ext.training.model import default_trainable
    from megatron_ext.core.param_groups import parameter_groups
    from megatron_ext.training import stages

    model = tiny_llava()
    groups = parameter_groups(model)
    names = [n for ps in groups.values() for n, _ in ps]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each exactly once
    assert {n for n, _ in groups["projector"]} == {f"lm.projector.linear_{i}.{k}" for i in (1, 2)
                                                   for k in ("weight", "bias")}
    # feature layer -2 of 3 blocks: block 3 (index 2), the final norm and the pooling head never
    # reach the features
    unused = {n for n, _ in groups["unused"]}
    assert unused and all(".layers.2." in n or "post_layernorm" in n or ".head." in n for n in unused)
    assert any(".layers.1." in n for n, _ in groups["vision"])
    assert all(n.startswith("lm.language_model.") for n, _ in groups["llm"])
    for stage, trainable in STAGES.items():
        summary = stages.apply_trainable(model, trainable)
        assert all(p.requires_grad == (g in trainable) for g, ps in groups.items() for _, p in ps), stage
        assert summary["projector"][1] == 48 * 64 + 64 + 64 * 64 + 64
    assert default_trainable("llava", "s2") == ["projector", "vision"]


def test_bad_inputs_say_what_to_change(tmp_path):
    from megatron_ext.methods.llava.config import LlavaConfigError, llava_config
    from megatron_ext.methods.llava.data import image_tokens

    model = tiny_llava()
    b = llava_inputs()
    short = dict(b, image_mask=b["image_mask"].clone())
    short["image_mask"][1, IMAGE_TOKENS - 1] = False
    with pytest.raises(ValueError, match=r"marks \[16, 15\] positions per sample"):
        forward(model, short)
    with pytest.raises(ValueError, match="image_mask"):
        model(b["input_ids"], b["position_ids"], None, pixel_values=b["pixel_values"])
    with pytest.raises(LlavaConfigError, match="sequence_parallel"):  # (needs TP > 1 to build)
        llava_config(LLAVA).validate(SimpleNamespace(sequence_parallel=True))
    with pytest.raises(LlavaConfigError, match=r"unknown key\(s\) \['projector'\]"):
        llava_config(dict(LLAVA, llava=dict(projector="mlp3x")))
    from transformers import SiglipVisionModel

    SiglipVisionModel(siglip_config()).save_pretrained(tmp_path / "tower")
    assert image_tokens(tmp_path / "tower", IMAGE, llava_config(LLAVA)) == IMAGE_TOKENS
    with pytest.raises(LlavaConfigError, match=f"set data.image_size to {IMAGE}"):
        image_tokens(tmp_path / "tower", 32)
    with pytest.raises(LlavaConfigError, match="set the preset's vision.hidden_size to 48"):
        image_tokens(tmp_path / "tower", IMAGE, llava_config(dict(LLAVA, vision=dict(hidden_size=40))))


def test_training_flops_are_flops_py_llava_breakdown_without_the_encoder():
    from megatron_ext import flops
    from megatron_ext.methods import resolve_preset
    from megatron_ext.training.mfu import train_flops_per_sample

    preset = resolve_preset("qwen2.5-7b-llava")
    ours = train_flops_per_sample(preset, "llava", 512, 729)
    parts = flops.breakdown("qwen2.5-7b", "llava", 729, 512, "siglip2-so400m")  # LLM on 512 + 729
    assert set(parts) == {"decoder projections", "attention scores", "LM head", "vision encoder"}
    assert parts["decoder projections"] == flops.decoder_projection_flops(flops.LLMS["qwen2.5-7b"], 512 + 729)
    # MFU leaves the vision encoder out, as for the other methods
    assert ours == pytest.approx(3 * (sum(parts.values()) - parts["vision encoder"]), rel=1e-12)
    assert ours > 2 * train_flops_per_sample(preset, "none", 512, 729)  # the visual tokens dominate
