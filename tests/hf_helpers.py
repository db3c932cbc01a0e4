"""Tiny random Hugging Face checkpoints written by the tests themselves."""

from pathlib import Path

import torch

QWEN2_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=250, max_position_embeddings=128,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)


def write_qwen2(path: Path, seed: int = 0, **overrides) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = dict(QWEN2_TINY, **overrides)
    theta = cfg.pop("rope_theta")
    config = Qwen2Config(**cfg, rope_parameters={"rope_type": "default", "rope_theta": theta})
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # random biases too, so the qkv bias mapping is checked
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    model.save_pretrained(path)
    return path


LLAMA_TINY = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=4, num_attention_heads=6,
                  num_key_value_heads=3, vocab_size=250, max_position_embeddings=128,
                  rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def write_llama(path: Path, seed: int = 0, rope_scaling: dict | None = None, **overrides) -> Path:
    """A random LlamaForCausalLM (6 heads: TP 1, 2 with 2 KV heads, 3 with 3)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(LLAMA_TINY, **overrides)
    rope = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
    rope.update(rope_scaling or {})
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**cfg, rope_parameters=rope)).save_pretrained(path)
    return path


def hf_logits(path: Path, input_ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids).logits
