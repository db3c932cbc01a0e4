"""Settings a multi-GPU run would die on, refused at start-up with one line that has the numbers:
FP8 shapes Transformer Engine cannot run, recompute that would lose the conditioning; and the
TransformerConfig the GPU-side training settings turn into."""

from __future__ import annotations

import pytest

from megatron_ext.training import preflight
from megatron_ext.training.config import ConfigError, load_config


def _cfg(*overrides):
    return load_config(None, ["model.preset=tiny", "train.global_batch_size=8", "train.steps=10", *overrides])


def test_fp8_refuses_tokens_per_micro_batch_not_divisible_by_8_with_the_fix():
    # LLaVA's case in numbers: 985 tokens x micro-batch 4 = 3940
    with pytest.raises(ConfigError) as e:
        preflight.check(_cfg("train.fp8=hybrid", "data.seq_length=985", "train.micro_batch_size=4"), 1)
    line = str(e.value)
    assert "\n" not in line and "985" in line and "3940" in line and "data.seq_length=986" in line
    cfg = _cfg("train.fp8=hybrid", "data.seq_length=986", "train.micro_batch_size=4")
    assert preflight.check(cfg, 1) == 1  # 3944 = 8 x 493
    assert preflight.check(_cfg("data.seq_length=985", "train.micro_batch_size=4"), 1) == 1  # bf16: any


def test_fp8_refuses_widths_not_divisible_by_16(tmp_path):
    import yaml

    from megatron_ext.core.presets import load_preset

    preset = load_preset("tiny")
    preset["llm"]["ffn_hidden_size"] = 136  # 68 per rank at TP=2
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(ConfigError, match=r"ffn_hidden_size / tensor parallel': 68"):
        preflight.check(load_config(None, [f"model.preset={path}", "train.fp8=hybrid", "data.seq_length=32",
                                           "parallel.tensor=2", "train.global_batch_size=8", "train.steps=10"]), 2)


def test_recompute_settings_are_checked(tmp_path):
    import yaml

    from megatron_ext.core.presets import load_preset

    with pytest.raises(ConfigError, match="train.recompute=everything: use full, selective"):
        preflight.check(_cfg("train.recompute=everything"), 1)
    preset = load_preset("tiny")
    preset["transformer"] = {"recompute_modules": ["core_attn", "mlp"]}
    path = tmp_path / "mlp-recompute.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(ConfigError, match=r"recompute_modules \['mlp'\].*train.recompute=full"):
        preflight.check(load_config(None, [f"model.preset={path}", "train.recompute=selective",
                                           "train.global_batch_size=8", "train.steps=10"]), 1)
    assert preflight.check(_cfg("train.recompute=full"), 1) == 1


def test_training_settings_become_megatron_settings():
    from megatron_ext.training.model import config_overrides

    out = config_overrides(_cfg("train.recompute=full", "train.first_stage_layers=1", "parallel.pipeline=2"))
    assert out == dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1,
                       num_layers_in_first_pipeline_stage=1)
    assert config_overrides(_cfg("train.first_stage_layers=1")) == {}  # no pipeline: nothing to place


def test_stage_layer_counts_megatron_refuses_are_one_line():
    layers = 4  # the tiny preset
    with pytest.raises(ConfigError, match=f"train.first_stage_layers={layers}, .*of {layers} layers: Mismatch"):
        preflight.check(_cfg("parallel.pipeline=2", f"train.first_stage_layers={layers}"), 2)
    assert preflight.check(_cfg("parallel.pipeline=2", "train.first_stage_layers=1"), 2) == 1


def test_stage_split_follows_the_estimated_costs():
    from megatron_ext.training.pipeline_balance import StageCosts, split

    assert split(28, 2, StageCosts(layer=1.0, first=0.0, last=0.0)) == (14, 14)
    assert split(28, 2, StageCosts(layer=1.0, first=4.0, last=0.0)) == (12, 16)  # a tower on stage 0
    assert split(28, 2, StageCosts(layer=1.0, first=0.0, last=2.0)) == (15, 13)  # the LM head at the end
    first, last = split(28, 4, StageCosts(layer=1.0, first=3.0, last=1.0))
    assert (28 - first - last) % 2 == 0 and max(first + 3, last + 1, (28 - first - last) / 2) <= 8.5


def test_7b_rose_default_split_offloads_a_trained_tower(tmp_path):
    import json

    from megatron_ext.core.presets import load_preset
    from megatron_ext.training.pipeline_balance import default_stage_layers, stage_costs

    tower = tmp_path / "siglip2"
    tower.mkdir()  # SigLIP2-so400m at 384 px: 729 tokens
    (tower / "config.json").write_text(json.dumps(dict(hidden_size=1152, num_hidden_layers=27,
                                                       intermediate_size=4304, patch_size=14)))
    preset = load_preset("qwen2.5-7b-rose")
    cfg = _cfg("parallel.pipeline=2", "data.seq_length=512", "data.image_size=384", "data.kind=webdataset",
               "data.manifest=m.json", f"model.vision_weights={tower}")
    s2 = default_stage_layers(cfg, preset, ["generator", "vision"])
    costs = stage_costs(cfg, preset, ["generator", "vision"])
    assert costs.first > costs.layer and costs.last > costs.layer  # both ends carry more than a layer
    assert s2[0] < 14 and s2[0] + s2[1] == 28  # the trained tower's backward moves layers off stage 0
    own = _cfg("parallel.pipeline=2", "train.first_stage_layers=10")
    assert default_stage_layers(own, preset, ["generator"]) == (10, None)  # the config wins
    assert default_stage_layers(_cfg("parallel.pipeline=2"), load_preset("tiny"), ["generator"]) == (None, None)
