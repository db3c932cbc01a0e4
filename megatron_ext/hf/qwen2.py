"""Qwen2 / Qwen2.5: biases on q, k and v (and nowhere else). The converter is shared
(megatron_ext/hf/decoder.py); its names are re-exported here for callers of the Qwen2-only API."""

from megatron_ext.hf.arch import Architecture, register
from megatron_ext.hf.decoder import (CheckpointError, llm_preset_from_hf, load_llm, megatron_to_hf,  # noqa: F401
                                     pad_vocab, read_hf_config)

QWEN2 = register(Architecture(name="qwen2", hf_class="Qwen2ForCausalLM", config_class="Qwen2Config",
                              qkv_bias=True))
load_qwen2 = load_llm
