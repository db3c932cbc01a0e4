"""Megatron TransformerConfig for Qwen2-shaped decoders (RMSNorm, SwiGLU, GQA, QKV bias, RoPE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def qwen2_transformer_config(llm: dict, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                             dtype: torch.dtype = torch.float32, **overrides):
    """llm: num_layers, hidden_size, ffn_hidden_size, num_attention_heads, num_query_groups,
    and optionally kv_channels, norm_eps. Other TransformerConfig fields go in overrides."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    on_gpu = torch.cuda.is_available()
    kwargs = dict(
        num_layers=llm["num_layers"], hidden_size=llm["hidden_size"],
        ffn_hidden_size=llm["ffn_hidden_size"], num_attention_heads=llm["num_attention_heads"],
        num_query_groups=llm.get("num_query_groups", llm["num_attention_heads"]),
        kv_channels=llm.get("kv_channels"),
        layernorm_epsilon=llm.get("norm_eps", 1e-6),
        normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, add_qkv_bias=True,
        attention_dropout=0.0, hidden_dropout=0.0,
        tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=pipeline_parallel,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16,
        # fused kernels need CUDA; on CPU the unfused paths of the same modules run
        use_cpu_initialization=not on_gpu, bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu, masked_softmax_fusion=on_gpu, apply_rope_fusion=False,
        persist_layer_norm=on_gpu, gradient_accumulation_fusion=False,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def gpt_model_kwargs(llm: dict) -> dict:
    """GPTModel arguments that come from the llm preset (shared by every method's builder)."""
    return dict(vocab_size=llm["vocab_size"], max_sequence_length=llm["max_position_embeddings"],
                rotary_base=llm.get("rope_theta", 1000000.0),
                share_embeddings_and_output_weights=bool(llm.get("tie_word_embeddings", False)))


def preset_transformer_config(preset: dict, dtype: torch.dtype = torch.float32,
                              config_overrides: dict | None = None):
    """The TransformerConfig of a preset for this process's TP/PP sizes: the llm section, then the
    preset's optional `transformer:` overrides, then the caller's."""
    from megatron.core import parallel_state

    overrides = dict(preset.get("transformer", {}))
    overrides.update(config_overrides or {})
    return qwen2_transformer_config(
        preset["llm"], parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_pipeline_model_parallel_world_size(), dtype, **overrides)
