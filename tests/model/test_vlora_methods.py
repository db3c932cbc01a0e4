"""build_model: the kind of injection (rose, vlora, vora, none) is a config choice on one LLM."""

import pytest
import torch

from lora_helpers import VLORA, load_base, plain_gpt, vlora_inputs
from megatron_ext.core.low_rank import low_rank_layers
from megatron_ext.methods import build_model, resolve_preset
from megatron_ext.methods.none import BaseLLM
from megatron_ext.methods.rose import ROSEModel
from megatron_ext.methods.vlora import VLoRAModel
from megatron_ext.methods.vora import VoRAModel

pytestmark = pytest.mark.usefixtures("megatron_single_process")


def test_same_llm_every_method():
    preset = dict(resolve_preset("tiny-vlora"), rose=resolve_preset("tiny")["rose"],
                  vora=resolve_preset("tiny-vora")["vora"])
    models = {m: build_model(preset, m, backend="local") for m in ("rose", "vlora", "vora", "none")}
    assert isinstance(models["rose"], ROSEModel) and isinstance(models["vlora"], VLoRAModel)
    assert isinstance(models["vora"], VoRAModel) and isinstance(models["none"], BaseLLM)
    assert not low_rank_layers(models["none"]) and models["none"].generator is None
    # the LLM underneath has the same shape everywhere: the plain model's weights load into each
    # LoRA-style model under the same keys
    plain = models["none"].language_model.state_dict()
    for m in ("vlora", "vora"):
        missing, unexpected = models[m].language_model.load_state_dict(plain, strict=False)
        assert not unexpected and all(".lora_" in k or ".aux_head." in k for k in missing)


def test_none_is_megatrons_gpt_and_vlora_starts_there():
    torch.manual_seed(0)
    none = build_model("tiny-vlora", "none", backend="local")
    plain = plain_gpt(none.config)
    none.language_model.load_state_dict(plain.state_dict())
    vlora = build_model("tiny-vlora", backend="local")  # the preset's only method section
    load_base(vlora, plain)
    b = vlora_inputs()
    with torch.no_grad():
        ref = plain(b["input_ids"], b["position_ids"], None)
        assert (none(b["input_ids"], b["position_ids"], None, b["visual_features"]) - ref).abs().max() == 0
        assert (vlora(b["input_ids"], b["position_ids"], None, b["visual_features"]) - ref).abs().max() <= 1e-6


def test_paper_presets_load_with_the_papers_numbers():
    v = resolve_preset("vicuna-7b-vlora")
    assert v["vlora"] == dict(every=4, weight_types=["q", "k", "v", "o", "mlp"], rank=64,
                              generator_width=512, generator_depth=8, generator_heads=8)
    assert v["llm"]["num_layers"] == 32 and v["vision"]["hidden_size"] == 1024
    q = resolve_preset("qwen2.5-7b-vora")
    assert q["vora"]["rank"] == 1024 and q["vora"]["vit_layers"] == 24 and q["vora"]["patch_size"] == 14
    with pytest.raises(ValueError, match="method="):
        build_model(dict(v, vora=q["vora"]))
