"""The captioner interface, backend selection (logged once) and retry-then-record."""
from __future__ import annotations

import abc
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import List, Optional

log = logging.getLogger(__name__)


@dataclass
class CaptionResult:
    caption: Optional[str]
    error: Optional[str] = None


class Captioner(abc.ABC):
    name: str

    @abc.abstractmethod
    def caption_batch(self, images: list, instructions: List[str]) -> List[str]:
        """PIL images and one instruction each -> captions. Raises on failure."""


def caption_with_retries(captioner: Captioner, images: list, instructions: List[str],
                         retries: int) -> List[CaptionResult]:
    """Whole batch first; if it fails, each sample alone up to `retries` more times, so one bad
    image costs only its own caption and its error is recorded."""
    try:
        return [CaptionResult(c) for c in captioner.caption_batch(images, instructions)]
    except Exception as e:  # noqa: BLE001 - any backend failure is retried per sample
        log.warning("%s: batch of %d failed (%s); retrying samples one by one", captioner.name, len(images), e)
    results = []
    for img, ins in zip(images, instructions):
        error = None
        for _ in range(max(1, retries)):
            try:
                results.append(CaptionResult(captioner.caption_batch([img], [ins])[0]))
                break
            except Exception as e:  # noqa: BLE001
                error = f"{type(e).__name__}: {e}"[:500]
        else:
            results.append(CaptionResult(None, error))
    return results


class BackendUnavailable(ImportError):
    pass


def vllm_usable() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch
    return torch.cuda.is_available()


def select_backend(requested: str) -> str:
    if requested == "auto":
        return "vllm" if vllm_usable() else "transformers"
    if requested == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BackendUnavailable("recaption.backend is 'vllm' but vllm is not installed "
                          "(pip install '.[gpu]' on a CUDA machine, or set recaption.backend: transformers)")
    return requested


def check_model_dir(path: Optional[str]) -> str:
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(f"recaption.model: captioner checkpoint directory not found: {path!r} "
                                f"(a local Qwen2.5-VL directory; build a tiny test one with "
                                f"`python -m recaption.tiny --out DIR`)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"recaption.model: {path!r} has no config.json; not a model checkpoint")
    return path


def captioner_name(rc) -> str:
    return rc.name or os.path.basename(os.path.normpath(rc.model))


def build_captioner(rc, backend: str) -> Captioner:
    """rc: RecaptionConfig; backend: the resolved one ('transformers' or 'vllm')."""
    check_model_dir(rc.model)
    if backend == "vllm":
        from recaption.vllm_backend import VLLMCaptioner
        return VLLMCaptioner(rc)
    from recaption.hf_backend import TransformersCaptioner
    return TransformersCaptioner(rc)
