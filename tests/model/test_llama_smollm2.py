"""The real SmolLM2-135M-Instruct from its PyPI package: a plain Llama folder that transformers loads,
that answers like the real model, and that the Llama converter puts into Megatron with transformers'
logits. Slow: the GGUF's de-quantisation takes about a minute (once per session: conftest.smollm2_dir;
PARAMVISION_SMOLLM2=<dir> reuses one folder across sessions)."""

import json
import time

import pytest
import torch

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_converted_folder_is_a_plain_llama_with_its_chat_template(smollm2_dir):
    from transformers import AutoTokenizer

    from megatron_ext.hf.decoder import check_preset, read_hf_config
    from megatron_ext.hf.smollm2 import convert
    from megatron_ext.methods import resolve_preset

    cfg = read_hf_config(smollm2_dir)
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    check_preset(resolve_preset("smollm2-135m")["llm"], smollm2_dir)  # the preset is this model
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is" in prompt
    assert tok.convert_ids_to_tokens(json.loads((smollm2_dir / "generation_config.json").read_text())
                                     ["eos_token_id"]) == "<|im_end|>"
    stamp = (smollm2_dir / "model.safetensors").stat().st_mtime
    t0 = time.perf_counter()
    assert convert(smollm2_dir) == smollm2_dir  # idempotent: a complete folder is kept
    assert time.perf_counter() - t0 < 1 and (smollm2_dir / "model.safetensors").stat().st_mtime == stamp


def test_it_is_the_real_model_greedy_answer_names_paris(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.usefixtures("megatron_single_process")
def test_megatron_logits_equal_transformers_on_the_real_weights(smollm2_dir):
    from transformers import AutoModelForCausalLM

    from megatron_ext.hf.decoder import load_llm
    from megatron_ext.methods import build_model

    model = build_model("smollm2-135m", method="none", backend="local")
    assert load_llm(model.language_model, smollm2_dir) == []
    ids = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model(ids, torch.arange(24)[None], None)
        ref = hf(ids).logits
    assert (ours - ref).abs().max() < 1e-4
