"""rose.t_scale, the output scale of the VRMG's rotation head (the S1 stability knob): it scales
T exactly, travels in checkpoints and exports (the export's logits equal Megatron's), and the model
reports the size of its rotations for metrics.jsonl (step_metrics)."""

import json

import pytest
import torch

from rose_helpers import PRESET, inputs, randomize_generator, tiny_rose

pytestmark = pytest.mark.usefixtures("megatron_single_process")


def test_t_scale_scales_T_and_is_in_the_state_dict():
    base, scaled = tiny_rose(), tiny_rose(t_scale=0.25)
    scaled.load_state_dict({k: v for k, v in base.state_dict().items() if not k.endswith("t_scale")}, strict=False)
    randomize_generator(base), randomize_generator(scaled)
    x = inputs()["visual_features"]
    with torch.no_grad():
        t_base, t_scaled = base.vrmg(x), scaled.vrmg(x)  # T, before the Cayley map
    for key in t_base:
        torch.testing.assert_close(t_scaled[key], 0.25 * t_base[key])
    assert any(k.endswith("t_scale") and float(v) == 0.25 for k, v in scaled.state_dict().items())


def test_bad_t_scale_is_one_clear_error():
    from megatron_ext.methods.rose.config import RoseConfigError

    with pytest.raises(RoseConfigError, match="rose.t_scale=0"):
        tiny_rose(t_scale=0)


def test_step_metrics_report_the_rotation_size():
    model = tiny_rose()
    assert model.step_metrics() == {}  # nothing measured before a forward
    with torch.no_grad():
        model(**inputs())
    m = model.step_metrics()
    assert m == {"rose_skew_norm_max": 0.0, "rose_skew_norm_mean": 0.0}  # R = I at initialisation
    randomize_generator(model, scale=0.1)
    with torch.no_grad():
        T = model.vrmg(inputs()["visual_features"])
        model(**inputs())
    m = model.step_metrics()
    expected = max(float((2 ** 0.5) * t.norm(dim=-1).max()) for t in T.values())
    assert m["rose_skew_norm_max"] == pytest.approx(expected, rel=1e-5)
    assert 0 < m["rose_skew_norm_mean"] <= m["rose_skew_norm_max"]


def test_export_carries_t_scale(tmp_path):
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, AutoModelForCausalLM

    from megatron_ext.core.vlm import VisionLanguageModel
    from megatron_ext.export.folder import export_model
    from megatron_ext.methods import build_model
    from megatron_ext.hf.vision_tower import VisionTower
    from recaption.tiny import build_tokenizer

    preset = json.loads(json.dumps(PRESET))
    preset["llm"]["vocab_size"] = 151680  # the tiny tokenizer's Qwen2.5 vocabulary, padded
    preset["rose"]["t_scale"] = 0.3
    torch.manual_seed(0)
    lm = build_model(preset, method="rose", backend="local")
    randomize_generator(lm, scale=0.1)
    tower = VisionTower.from_config(SiglipVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8), feature_layer=-1)
    vlm = VisionLanguageModel(lm, tower, lm.rose.equipped_layers(lm.config.num_layers), train_vision=False)
    export_model(vlm, preset["llm"], tmp_path, build_tokenizer(),
                 SiglipImageProcessorPil(size={"height": 32, "width": 32}))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.randint(0, 151665, (1, 12), generator=torch.Generator().manual_seed(1))
    px = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = vlm(ids, torch.arange(12)[None], None, px)[..., :151665]
        theirs = hf(input_ids=ids, pixel_values=px).logits
    assert (ours - theirs).abs().max() < 1e-4
