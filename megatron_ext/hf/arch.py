"""What differs between the decoder-only LLM families the converter reads and writes.

Every family here is the same Megatron GPTModel (RMSNorm, SwiGLU, GQA, RoPE) with the Hugging Face
names of megatron_ext/hf/decoder.py; an `Architecture` holds only the differences: the HF classes,
whether q/k/v carry a bias, and which config settings Megatron's layers cannot express. Each family
registers itself from its own small module (megatron_ext/hf/qwen2.py, megatron_ext/hf/llama.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

DEFAULT = "qwen2"  # presets without llm.architecture (the project's first family)
_MODULES = ("megatron_ext.hf.qwen2", "megatron_ext.hf.llama")
_REGISTRY: dict[str, "Architecture"] = {}


@dataclass(frozen=True)
class Architecture:
    name: str                      # the preset's llm.architecture
    hf_class: str                  # config.json "architectures" (a transformers class)
    config_class: str              # its transformers config class, for the export
    qkv_bias: bool                 # Megatron add_qkv_bias
    # HF config.json -> the reason it cannot be converted (a setting Megatron's layers here cannot
    # express), or None
    unsupported: Callable[[dict], str | None] = lambda cfg: None


def register(arch: Architecture) -> Architecture:
    _REGISTRY[arch.name] = arch
    return arch


def _all() -> dict[str, Architecture]:
    for m in _MODULES:
        importlib.import_module(m)
    return _REGISTRY


def by_name(name: str | None) -> Architecture:
    known = _all()
    if (name or DEFAULT) not in known:
        raise ValueError(f"llm.architecture={name!r} is not known; known: {sorted(known)}")
    return known[name or DEFAULT]


def of_preset(llm: dict) -> Architecture:
    return by_name(llm.get("architecture"))


def of_hf_config(cfg: dict, where) -> Architecture:
    """The family of a HF config.json (its `architectures`, else its model_type)."""
    from megatron_ext.hf.safetensors_dir import CheckpointError

    archs = cfg.get("architectures") or [cfg.get("model_type")]
    for arch in _all().values():
        if arch.hf_class in archs or arch.name == cfg.get("model_type") and not cfg.get("architectures"):
            return arch
    raise CheckpointError(f"{where}: architecture {archs} is not supported by this importer; "
                          f"supported: {sorted(a.hf_class for a in _all().values())}")
