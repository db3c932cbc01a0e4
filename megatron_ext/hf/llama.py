"""Llama (Llama 2/3, Vicuna, SmolLM2, ...): no biases; RoPE scaling as the shared converter reads it
(megatron_ext/hf/decoder.py). Checkpoints with attention or MLP biases are refused: Megatron adds a
bias to q/k/v alone or to every linear, not Llama's o_proj or MLP alone."""

from megatron_ext.hf.arch import Architecture, register


def _unsupported(cfg: dict) -> str | None:
    biased = [k for k in ("attention_bias", "mlp_bias") if cfg.get(k)]
    if biased:
        return f"{', '.join(biased)}=true (Llama with biases) is not supported by this converter"
    return None


LLAMA = register(Architecture(name="llama", hf_class="LlamaForCausalLM", config_class="LlamaConfig",
                              qkv_bias=False, unsupported=_unsupported))
