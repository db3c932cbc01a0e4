"""Megatron TransformerConfig for Qwen2/Llama-shaped decoders (RMSNorm, SwiGLU, GQA, RoPE; QKV bias
per llm.architecture, core/llm_families.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_ext.core.llm_families import of_preset
from megatron_ext.device import fused_softmax_available


def qwen2_transformer_config(llm: dict, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                             dtype: torch.dtype = torch.float32, **overrides):
    """llm: num_layers, hidden_size, ffn_hidden_size, num_attention_heads, num_query_groups,
    and optionally architecture, kv_channels, norm_eps. Other TransformerConfig fields go in overrides."""
    on_gpu = torch.cuda.is_available()
    kwargs = dict(
        num_layers=llm["num_layers"], hidden_size=llm["hidden_size"],
        ffn_hidden_size=llm["ffn_hidden_size"], num_attention_heads=llm["num_attention_heads"],
        num_query_groups=llm.get("num_query_groups", llm["num_attention_heads"]),
        kv_channels=llm.get("kv_channels"),
        layernorm_epsilon=llm.get("norm_eps", 1e-6),
        normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, add_qkv_bias=of_preset(llm).qkv_bias,
        attention_dropout=0.0, hidden_dropout=0.0,
        tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=pipeline_parallel,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16,
        # fused kernels need CUDA; on CPU the unfused paths of the same modules run. The masked
        # softmax kernel is an Apex/Megatron extension module, on only where it imports
        use_cpu_initialization=not on_gpu, bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu, masked_softmax_fusion=fused_softmax_available(), apply_rope_fusion=False,
        persist_layer_norm=on_gpu, gradient_accumulation_fusion=False,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def gpt_model_kwargs(llm: dict) -> dict:
    """GPTModel arguments that come from the llm preset (shared by every method's builder)."""
    return dict(vocab_size=llm["vocab_size"], max_sequence_length=llm["max_position_embeddings"],
                rotary_base=llm.get("rope_theta", 1000000.0),
                share_embeddings_and_output_weights=bool(llm.get("tie_word_embeddings", False)),
                **megatron_rope_kwargs(llm.get("rope_scaling")))


# Megatron's Llama-3 RoPE scaling fixes these three; its factor is free
_LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def megatron_rope_kwargs(scaling: dict | None) -> dict:
    """GPTModel arguments for llm.rope_scaling (HF rope_parameters without rope_theta): `linear`
    (positions divided by factor) or `llama3`; other kinds raise with what is supported."""
    if not scaling:
        return {}
    kind, factor = scaling.get("rope_type"), scaling.get("factor")
    if kind == "linear" and factor:
        return {"seq_len_interpolation_factor": float(factor)}
    if kind == "llama3" and factor:
        off = {k: scaling.get(k) for k, v in _LLAMA3_FIXED.items() if float(scaling.get(k, v)) != v}
        if not off:
            return {"rope_scaling": True, "rope_scaling_factor": float(factor)}
        raise ValueError(f"RoPE scaling llama3 with {off}: Megatron-Core's rotary embedding fixes "
                         f"{_LLAMA3_FIXED}")
    raise ValueError(f"RoPE scaling {scaling} is not supported: use rope_type linear or llama3 with a factor")


def preset_transformer_config(preset: dict, dtype: torch.dtype = torch.float32,
                              config_overrides: dict | None = None):
    """The TransformerConfig of a preset for this process's TP/PP sizes: the llm section, then the
    preset's optional `transformer:` overrides, then the caller's."""
    overrides = dict(preset.get("transformer", {}))
    overrides.update(config_overrides or {})
    return qwen2_transformer_config(
        preset["llm"], parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_pipeline_model_parallel_world_size(), dtype, **overrides)
