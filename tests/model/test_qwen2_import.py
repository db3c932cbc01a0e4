"""Qwen2 checkpoints into Megatron: logits equal transformers' Qwen2ForCausalLM (an independent
implementation) at TP=1, TP=2 and PP=2; clear errors for bad checkpoints."""

import functools
import json

import pytest
import torch

from distributed import run_distributed_each
from hf_helpers import hf_logits, write_qwen2


def _build(path, method, tp=1):
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_ext.hf.decoder import llm_preset_from_hf
    from megatron_ext.core.llm_config import gpt_model_kwargs, qwen2_transformer_config
    from megatron_ext.methods.rose import ROSEModel
    from megatron_ext.methods.rose import rose_config

    llm = llm_preset_from_hf(path, tp=tp, vocab_multiple=1)
    config = qwen2_transformer_config(llm, tp, parallel_state.get_pipeline_model_parallel_world_size())
    if method == "none":
        model = GPTModel(config, get_gpt_layer_local_spec(normalization="RMSNorm"),
                         position_embedding_type="rope", **gpt_model_kwargs(llm),
                         pre_process=parallel_state.is_pipeline_first_stage(),
                         post_process=parallel_state.is_pipeline_last_stage())
        return model, model
    preset = {"llm": llm, "vision": {"hidden_size": 48},
              "rose": dict(every=2, blocks=8, generator_width=32, generator_heads=4)}
    model = ROSEModel(config, rose_config(preset), backend="local", **gpt_model_kwargs(llm))
    return model, model.language_model


def _logits(model, ids, method):
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        if method == "none":
            return model(ids, pos, None)
        return model(ids, pos, None, torch.randn(ids.shape[0], 5, 48))


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    return write_qwen2(tmp_path_factory.mktemp("qwen2"))


@pytest.mark.usefixtures("megatron_single_process")
@pytest.mark.parametrize("method", ["none", "rose"])
def test_tp1_logits_equal_transformers(qwen2_dir, method):
    from megatron_ext.hf.decoder import load_llm

    model, lm = _build(qwen2_dir, method)
    untouched = load_llm(lm, qwen2_dir)
    assert untouched == []  # every LLM tensor came from the checkpoint
    ids = torch.randint(0, 250, (2, 20), generator=torch.Generator().manual_seed(0))
    ours = _logits(model, ids, method)
    ref = hf_logits(qwen2_dir, ids)
    assert (ours[..., :250] - ref).abs().max() < 1e-4


def _parallel_worker(rank, path, tp, pp):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_ext.hf.decoder import load_llm
    from megatron_ext.parallel import init_parallel

    init_parallel(tp, pp)
    model, lm = _build(path, "rose", tp)
    load_llm(lm, path)
    ids = torch.randint(0, 250, (2, 20), generator=torch.Generator().manual_seed(0))
    vis = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(20).expand_as(ids)
    with torch.no_grad():
        if pp == 1:
            out = gather_from_tensor_model_parallel_region(model(ids, pos, None, vis))
        else:  # stage 0 sends its hidden states to stage 1 by hand (what the 1F1B schedule does)
            group = parallel_state.get_pipeline_model_parallel_group()
            if parallel_state.is_pipeline_first_stage():
                hidden = model(ids, pos, None, vis)
                torch.distributed.send(hidden.contiguous(), dst=1, group=group)
                out = None
            else:
                hidden = torch.empty(20, 2, 64)
                torch.distributed.recv(hidden, src=0, group=group)
                model.set_input_tensor(hidden)
                out = model(ids, pos, None, vis)
    return None if out is None else out[..., :250]


LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2)}


@pytest.fixture(scope="module")
def parallel_logits(qwen2_dir):
    """Each layout's logits from every rank, both layouts in one spawn of the two processes."""
    return run_distributed_each({name: functools.partial(_parallel_worker, path=qwen2_dir, tp=tp, pp=pp)
                                 for name, (tp, pp) in LAYOUTS.items()})


@pytest.mark.multiproc
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parallel_import_logits_equal_transformers(qwen2_dir, parallel_logits, layout):
    ids = torch.randint(0, 250, (2, 20), generator=torch.Generator().manual_seed(0))
    ref = hf_logits(qwen2_dir, ids)
    outs = [o for o in parallel_logits[layout] if o is not None]
    assert outs
    for out in outs:
        assert (out - ref).abs().max() < 1e-4


@pytest.mark.usefixtures("megatron_single_process")
def test_vocab_is_padded_for_tp_and_padding_rows_are_zero(tmp_path):
    from megatron_ext.hf.decoder import llm_preset_from_hf, load_llm, pad_vocab

    assert pad_vocab(151643, 4) == 152064 and pad_vocab(250, 1, 1) == 250
    path = write_qwen2(tmp_path / "q", vocab_size=251)
    model, lm = _build(path, "none", tp=1)
    assert llm_preset_from_hf(path, tp=2, vocab_multiple=1)["vocab_size"] == 252
    load_llm(lm, path)
    ids = torch.randint(0, 251, (1, 8))
    torch.testing.assert_close(_logits(model, ids, "none")[..., :251], hf_logits(path, ids), atol=1e-4, rtol=0)


@pytest.mark.usefixtures("megatron_single_process")
def test_tied_embeddings_checkpoint(tmp_path):
    """Qwen2.5 models up to 3B tie the LM head to the embedding."""
    from megatron_ext.hf.decoder import load_llm

    path = write_qwen2(tmp_path / "tied", tie_word_embeddings=True)
    model, lm = _build(path, "rose")
    assert lm.share_embeddings_and_output_weights
    load_llm(lm, path)
    ids = torch.randint(0, 250, (2, 10), generator=torch.Generator().manual_seed(3))
    assert (_logits(model, ids, "rose")[..., :250] - hf_logits(path, ids)).abs().max() < 1e-4


@pytest.mark.usefixtures("megatron_single_process")
def test_bad_checkpoints_fail_clearly(tmp_path, qwen2_dir):
    from megatron_ext.hf.decoder import CheckpointError, load_llm, read_hf_config

    with pytest.raises(CheckpointError, match="config.json not found"):
        read_hf_config(tmp_path / "nowhere")
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CheckpointError, match=r"\['GPT2LMHeadModel'\] is not supported"):
        read_hf_config(other)
    # config.json that does not match the weights
    bad = tmp_path / "bad"
    write_qwen2(bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (bad / "config.json").write_text(json.dumps(cfg))
    model, lm = _build(bad, "none")
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(128, 64\) "
                                              r"in the checkpoint but the config implies \(96, 64\)"):
        load_llm(lm, bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((qwen2_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="has no \\*.safetensors files"):
        load_llm(lm, empty)
