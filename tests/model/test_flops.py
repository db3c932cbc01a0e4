"""The FLOPs model reproduces the VLoRA paper's Table 1 (decoder blocks, forward, 32 text tokens)
within 1% and orders the methods as the papers claim."""

import pytest

from megatron_ext.device import peak_flops
from megatron_ext.flops import breakdown, main

LLM_PART = ("decoder projections", "attention scores", "perceptual weights")


def llm_gflops(method, visual, text=32, **kw):
    parts = breakdown("vicuna-7b", method, visual, text, lm_head=False, **kw)
    return sum(v for k, v in parts.items() if k in LLM_PART) / 1e9


# rows whose LLM is 7B-shaped (InstructBLIP, MiniGPT-4-v2, LLaVA-v1.5); the 9B rows use other LLMs
@pytest.mark.parametrize("visual, table", [(32, 827), (256, 3754), (576, 8027)])
def test_input_space_rows_of_vlora_table1(visual, table):
    assert llm_gflops("llava", visual) == pytest.approx(table, rel=0.01)


def test_vlora_row_of_table1():
    assert llm_gflops("vlora", 576) == pytest.approx(619, rel=0.01)
    # no visual tokens in the sequence: the LLM part does not grow with the image's tokens
    assert llm_gflops("vlora", 4096) == pytest.approx(llm_gflops("vlora", 64))


def test_rose_costs_a_fraction_of_llava_and_its_extras_are_small():
    rose = breakdown("qwen2.5-7b", "rose", 729, 512, "siglip2-so400m")
    llava = breakdown("qwen2.5-7b", "llava", 729, 512, "siglip2-so400m")
    assert sum(rose.values()) < 0.7 * sum(llava.values())
    extras = rose["rotations"] + rose["generator"]
    assert 0 < extras < 0.05 * rose["decoder projections"]
    # branch-form VoRA grows with LoRA, merged VoRA is the plain LLM on the longer sequence
    vora = breakdown("qwen2.5-7b", "vora", 729, 512, merged=False)
    assert vora["LoRA"] > 0 and breakdown("qwen2.5-7b", "vora", 729, 512, "siglip2-so400m").keys() == \
        {"decoder projections", "attention scores", "LM head"}  # no encoder at inference


def test_cli_prints_breakdown_and_total(capsys):
    main(["--llm", "vicuna-7b", "--method", "llava", "--visual-tokens", "576", "--text-tokens", "32",
          "--no-lm-head"])
    out = capsys.readouterr().out
    assert "attention scores" in out and "8068" in out.split("total")[1]


def test_peak_flops_for_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("cpu") is None
    with pytest.raises(ValueError, match="choose one of"):
        breakdown("qwen2.5-7b", "cross-attention", 1, 1)
