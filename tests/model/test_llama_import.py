"""Llama checkpoints into Megatron and back out: logits equal transformers' LlamaForCausalLM (an
independent implementation) at TP=1, PP=2, TP=2 and TP=3 (6 heads; 2 or 3 KV heads), tied and untied
embeddings, RoPE scaling; the export writes LlamaForCausalLM names and config; presets are checked
against checkpoints."""

import json

import pytest
import torch

from distributed import run_distributed
from hf_helpers import hf_logits, write_llama

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
IDS = torch.randint(0, 250, (2, 20), generator=torch.Generator().manual_seed(0))


def _build(path, method, tp=1):
    from megatron.core import parallel_state

    from megatron_ext.hf.decoder import llm_preset_from_hf
    from megatron_ext.methods import build_model

    llm = llm_preset_from_hf(path, tp=tp, vocab_multiple=1)
    assert llm["architecture"] == "llama"
    preset = {"llm": llm, "vision": {"hidden_size": 48},
              "rose": dict(every=2, blocks=6, generator_width=32, generator_heads=4)}
    model = build_model(preset, method=method, backend="local")
    assert model.config.add_qkv_bias is False  # Llama: no q/k/v bias
    assert model.config.pipeline_model_parallel_size == parallel_state.get_pipeline_model_parallel_world_size()
    return model, model.language_model


def _logits(model, ids=IDS, vis_seed=0):
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    vis = torch.randn(ids.shape[0], 5, 48, generator=torch.Generator().manual_seed(vis_seed))
    with torch.no_grad():
        return model(ids, pos, None, vis)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("llama"))


@pytest.mark.usefixtures("megatron_single_process")
@pytest.mark.parametrize("method", ["none", "rose"])
def test_tp1_logits_equal_transformers(llama_dir, method):
    from megatron_ext.hf.decoder import load_llm

    model, lm = _build(llama_dir, method)
    assert load_llm(lm, llama_dir) == []  # every LLM tensor came from the checkpoint
    assert (_logits(model)[..., :250] - hf_logits(llama_dir, IDS)).abs().max() < 1e-4


@pytest.mark.usefixtures("megatron_single_process")
@pytest.mark.parametrize("tied, rope", [
    (True, None),
    (False, {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192}),
    (False, {"rope_type": "linear", "factor": 4.0})])
def test_tied_embeddings_and_rope_scaling(tmp_path, tied, rope):
    from megatron_ext.hf.decoder import llm_preset_from_hf, load_llm

    # theta 5e5 with 16-wide heads puts frequencies on both sides of llama3's wavelength bands;
    # larger weights make attention (and so the logits) sensitive to positions
    shape = dict(rope_theta=500000.0, max_position_embeddings=256, initializer_range=0.1)
    path = write_llama(tmp_path / "m", seed=1, tie_word_embeddings=tied, rope_scaling=rope, **shape)
    assert llm_preset_from_hf(path).get("rope_scaling") == rope
    model, lm = _build(path, "none")
    assert lm.share_embeddings_and_output_weights is tied
    load_llm(lm, path)
    ids = torch.randint(0, 250, (1, 200), generator=torch.Generator().manual_seed(3))
    ref = hf_logits(path, ids)
    assert (_logits(model, ids)[..., :250] - ref).abs().max() < 1e-4
    if rope:  # the scaling is not a no-op at these positions: plain RoPE gives other logits
        plain = write_llama(tmp_path / "plain", seed=1, tie_word_embeddings=tied, **shape)
        assert (hf_logits(plain, ids) - ref).abs().max() > 1e-3


def _parallel_worker(rank, path, tp, pp):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_ext.hf.decoder import load_llm
    from megatron_ext.parallel import init_parallel

    init_parallel(tp, pp)
    model, lm = _build(path, "rose", tp)
    load_llm(lm, path)
    # each rank read only its slices: 1/tp of every split tensor (norms are read whole)
    pos = torch.arange(20).expand_as(IDS)
    vis = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if pp == 1:
            out = gather_from_tensor_model_parallel_region(model(IDS, pos, None, vis))
        else:  # stage 0 sends its hidden states to stage 1 by hand (what the 1F1B schedule does)
            group = parallel_state.get_pipeline_model_parallel_group()
            if parallel_state.is_pipeline_first_stage():
                torch.distributed.send(model(IDS, pos, None, vis).contiguous(), dst=1, group=group)
                return None
            hidden = torch.empty(20, 2, 96)
            torch.distributed.recv(hidden, src=0, group=group)
            model.set_input_tensor(hidden)
            out = model(IDS, pos, None, vis)
    return out[..., :250]


@pytest.mark.multiproc
@pytest.mark.parametrize("tp, pp, kv", [(1, 2, 3), (3, 1, 3),  # SmolLM2's 9/3 heads allow TP 1 or 3
                                        pytest.param(2, 1, 2, marks=pytest.mark.slow)])
def test_parallel_import_logits_equal_transformers(tmp_path, tp, pp, kv):
    path = write_llama(tmp_path / "m", num_key_value_heads=kv)
    ref = hf_logits(path, IDS)
    outs = [o for o in run_distributed(_parallel_worker, world_size=tp * pp, path=path, tp=tp, pp=pp)
            if o is not None]
    assert len(outs) == tp
    for out in outs:
        assert (out - ref).abs().max() < 1e-4


@pytest.mark.usefixtures("megatron_single_process")
@pytest.mark.parametrize("tied", [False, True])
def test_megatron_to_hf_gives_back_the_llama_checkpoint(tmp_path, tied):
    """Out again: the exported names, shapes and values are the checkpoint's, and the exported config
    rebuilds a LlamaForCausalLM with the same logits."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from megatron_ext.hf.decoder import hf_text_config, llm_preset_from_hf, load_llm, megatron_to_hf

    path = write_llama(tmp_path / "m", tie_word_embeddings=tied,
                       rope_scaling={"rope_type": "linear", "factor": 2.0})
    model, lm = _build(path, "none")
    load_llm(lm, path)
    out = megatron_to_hf(lm.state_dict(), lm.config, 250)
    original = load_file(str(path / "model.safetensors"))
    assert set(out) - {"lm_head.weight"} == set(original) - {"lm_head.weight"}
    for k, v in original.items():
        torch.testing.assert_close(out[k], v, atol=0, rtol=0)
    config = hf_text_config(llm_preset_from_hf(path, vocab_multiple=1), 250)
    assert type(config).__name__ == "LlamaConfig" and config.architectures == ["LlamaForCausalLM"]
    assert config.rope_parameters["rope_type"] == "linear" and config.tie_word_embeddings is tied
    rebuilt = AutoModelForCausalLM.from_config(config).eval()
    rebuilt.load_state_dict(out, strict=not tied)
    with torch.no_grad():
        assert (rebuilt(IDS).logits - hf_logits(path, IDS)).abs().max() < 1e-5


@pytest.mark.usefixtures("megatron_single_process")
def test_rose_export_of_a_llama_base_loads_and_merges_to_a_plain_llama(tmp_path, llama_dir):
    """The full export (remote modeling code) builds a Llama inside, its logits equal Megatron's, and
    merge_vision returns a plain LlamaForCausalLM carrying the image."""
    from transformers import AutoModelForCausalLM, SiglipImageProcessorPil, SiglipVisionConfig

    from megatron_ext.export.folder import export_model
    from megatron_ext.hf.decoder import llm_preset_from_hf, load_llm
    from megatron_ext.methods import build_model
    from megatron_ext.hf.vision_tower import VisionTower
    from megatron_ext.core.vlm import VisionLanguageModel
    from recaption.tiny import build_tokenizer
    from rose_helpers import randomize_generator

    tokenizer = build_tokenizer()
    llm = llm_preset_from_hf(llama_dir)
    llm.pop("hf_vocab_size")
    llm["vocab_size"] = 151680  # the tokenizer's (Qwen2.5's) vocabulary; rows past 250 stay zero
    preset = {"llm": llm, "vision": {"hidden_size": 48},
              "rose": dict(every=2, blocks=6, generator_width=32, generator_heads=4)}
    lm = build_model(preset, method="rose", backend="local")
    load_llm(lm.language_model, llama_dir)
    randomize_generator(lm, scale=0.1)
    tower = VisionTower.from_config(SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                                       num_attention_heads=4, image_size=32, patch_size=8))
    vlm = VisionLanguageModel(lm, tower, lm.rose.equipped_layers(4), train_vision=False)
    out = export_model(vlm, llm, tmp_path / "export", tokenizer,
                       SiglipImageProcessorPil(size={"height": 32, "width": 32}))
    text = json.loads((out / "config.json").read_text())["text_config"]
    assert text["model_type"] == "llama" and text["architectures"] == ["LlamaForCausalLM"]
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(hf.language_model).__name__ == "LlamaForCausalLM"
    ids = IDS[:1, :12]
    px = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = vlm(ids, torch.arange(12)[None], None, px)[..., :151665]
        theirs = hf(input_ids=ids, pixel_values=px).logits
        assert (ours - theirs).abs().max() < 1e-4
        assert (theirs - hf(input_ids=ids).logits).abs().max() > 1e-3  # the image changes the answer
        merged = hf.merge_vision(px)
        assert type(merged).__name__ == "LlamaForCausalLM"
        assert (merged(input_ids=ids).logits - theirs).abs().max() < 1e-4


def test_presets_are_llama_presets_the_converter_reads(tmp_path):
    """SmolLM2-135M and Vicuna-7B-v1.5 (VLoRA's LLM): their presets match the published config.json
    (written here without weights: check_preset reads config.json alone); a mismatch is named."""
    from transformers import LlamaConfig

    from megatron_ext.hf.decoder import CheckpointError, check_preset
    from megatron_ext.core.llm_config import qwen2_transformer_config
    from megatron_ext.methods import resolve_preset

    published = {  # the values of the checkpoints' config.json on the Hugging Face hub
        "vicuna-7b-vlora": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                             max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                             rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
    }
    for name, cfg in published.items():
        path = tmp_path / name
        LlamaConfig(**cfg, architectures=["LlamaForCausalLM"]).save_pretrained(path)
        preset = resolve_preset(name)
        check_preset(preset["llm"], path)
        assert qwen2_transformer_config(preset["llm"]).add_qkv_bias is False
    bad = json.loads((tmp_path / "smollm2-135m" / "config.json").read_text())
    bad["rope_parameters"]["rope_theta"] = 10000.0
    (tmp_path / "smollm2-135m" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"llm.rope_theta: preset 100000.0, checkpoint 10000.0"):
        check_preset(resolve_preset("smollm2-135m")["llm"], tmp_path / "smollm2-135m")


@pytest.mark.usefixtures("megatron_single_process")
def test_unsupported_llama_variants_fail_clearly(tmp_path, llama_dir):
    from megatron_ext.hf.decoder import CheckpointError, load_llm, read_hf_config
    from megatron_ext.methods import build_model

    cfg = json.loads((llama_dir / "config.json").read_text())
    for change, message in [({"attention_bias": True}, "attention_bias=true"),
                            ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
                             "RoPE scaling .*yarn.* is not supported"),
                            ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4,
                                                  "low_freq_factor": 2.0}}, "fixes")]:
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps(dict(cfg, **change)))
        with pytest.raises(CheckpointError, match=message):
            read_hf_config(bad)
    # a Qwen2-built model (q/k/v biases) cannot take a Llama checkpoint: the preset must say llama
    from megatron_ext.hf.decoder import llm_preset_from_hf
    llm = dict(llm_preset_from_hf(llama_dir, vocab_multiple=1), architecture="qwen2")
    model = build_model({"llm": llm, "vision": {"hidden_size": 48}}, method="none", backend="local")
    with pytest.raises(CheckpointError, match="set the preset's llm.architecture: llama"):
        load_llm(model.language_model, llama_dir)


def test_train_refuses_llm_weights_that_are_not_the_presets_llm(llama_dir, tmp_path):
    """model.llm_weights is checked against the preset before any model is built: one message
    naming each differing key."""
    from megatron_ext.training.trainer import check_llm_weights
    from megatron_ext.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=rf"model.llm_weights={llama_dir}: the model preset does not match "
                                          r".*llm.architecture: preset 'qwen2', checkpoint 'llama'.*"
                                          r"llm.hidden_size: preset 64, checkpoint 96"):
        check_llm_weights(load_config(str(ROOT / "configs/train/s1-rose-tiny.yaml"),
                                       [f"model.llm_weights={llama_dir}", f"log.run_dir={tmp_path}"]))
