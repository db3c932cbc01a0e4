"""What differs between the decoder-only LLM families the project builds, imports and exports.

Every family here is the same Megatron GPTModel (RMSNorm, SwiGLU, GQA, RoPE) with the Hugging Face
names of megatron_ext/hf/decoder.py; a `Family` holds only the differences: the HF classes,
whether q/k/v carry a bias, and which config settings Megatron's layers cannot express. A preset
names its family in llm.architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

DEFAULT = "qwen2"  # presets without llm.architecture (the project's first family)


@dataclass(frozen=True)
class Family:
    name: str                      # the preset's llm.architecture
    hf_class: str                  # config.json "architectures" (a transformers class)
    config_class: str              # its transformers config class, for the export
    qkv_bias: bool                 # Megatron add_qkv_bias
    # HF config.json -> the reason it cannot be converted (a setting Megatron's layers here cannot
    # express), or None
    unsupported: Callable[[dict], str | None] = lambda cfg: None


def _llama_unsupported(cfg: dict) -> str | None:
    """Megatron adds a bias to q/k/v alone or to every linear, not Llama's o_proj or MLP alone."""
    biased = [k for k in ("attention_bias", "mlp_bias") if cfg.get(k)]
    if biased:
        return f"{', '.join(biased)}=true (Llama with biases) is not supported by this converter"
    return None


FAMILIES = {f.name: f for f in (
    # Qwen2 / Qwen2.5: biases on q, k and v (and nowhere else)
    Family(name="qwen2", hf_class="Qwen2ForCausalLM", config_class="Qwen2Config", qkv_bias=True),
    # Llama (Llama 2/3, Vicuna, SmolLM2, ...): no biases; RoPE scaling as hf/decoder.py reads it
    Family(name="llama", hf_class="LlamaForCausalLM", config_class="LlamaConfig", qkv_bias=False,
           unsupported=_llama_unsupported),
)}


def by_name(name: str | None) -> Family:
    if (name or DEFAULT) not in FAMILIES:
        raise ValueError(f"llm.architecture={name!r} is not known; known: {sorted(FAMILIES)}")
    return FAMILIES[name or DEFAULT]


def of_preset(llm: dict) -> Family:
    return by_name(llm.get("architecture"))
