"""The captioner of the resolved backend. Apart from recaption/base.py so that the import graph runs one
way: base <- hf_backend, vllm_backend <- factory (each backend imports its heavy engine only when built)."""
from __future__ import annotations

from recaption.base import Captioner, check_model_dir
from recaption.hf_backend import TransformersCaptioner
from recaption.vllm_backend import VLLMCaptioner


def build_captioner(rc, backend: str) -> Captioner:
    """rc: RecaptionConfig; backend: the resolved one ('transformers' or 'vllm')."""
    check_model_dir(rc.model)
    return VLLMCaptioner(rc) if backend == "vllm" else TransformersCaptioner(rc)
