"""The captioner interface, backend selection and retry-then-record. The backends (hf_backend.py,
vllm_backend.py) import this module; recaption/factory.py builds one of them."""
from __future__ import annotations

import abc
import importlib.util
import logging
import os
import sys
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


class EngineDead(RuntimeError):
    """The captioner's engine cannot serve again in this process (vLLM's engine core died, a CUDA
    device assert or illegal access poisoned the context): retrying sample by sample would record
    every remaining sample as failed. The actor process must be replaced (restart_actor)."""


# vLLM's EngineDeadError; torch's AcceleratorError (CUDA errors from torch >= 2.8)
_DEAD_TYPES = {"EngineDeadError", "AcceleratorError"}
_DEAD_TEXT = ("CUDA error", "device-side assert", "illegal memory access", "EngineCore encountered",
              "CUDA-capable device", "NCCL error")


def engine_dead(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) leaves the engine unusable."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if {t.__name__ for t in type(exc).__mro__} & _DEAD_TYPES or any(t in str(exc) for t in _DEAD_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _call(captioner: Captioner, images: list, instructions: List[str]) -> List[str]:
    try:
        return captioner.caption_batch(images, instructions)
    except Exception as e:
        if engine_dead(e):
            raise EngineDead(f"{captioner.name}: the engine died ({type(e).__name__}: {e})"[:500]) from e
        raise


def caption_with_retries(captioner: Captioner, images: list, instructions: List[str],
                         retries: int) -> List[CaptionResult]:
    """Whole batch first; if it fails, each sample alone up to `retries` more times, so one bad
    image costs only its own caption and its error is recorded. An engine that died raises
    EngineDead instead (no sample is to blame)."""
    try:
        return [CaptionResult(c) for c in _call(captioner, images, instructions)]
    except EngineDead:
        raise
    except Exception as e:  # noqa: BLE001 - any other backend failure is retried per sample
        log.warning("%s: batch of %d failed (%s); retrying samples one by one", captioner.name, len(images), e)
    results = []
    for img, ins in zip(images, instructions):
        error = None
        for _ in range(max(1, retries)):
            try:
                results.append(CaptionResult(_call(captioner, [img], [ins])[0]))
                break
            except EngineDead:
                raise
            except Exception as e:  # noqa: BLE001
                error = f"{type(e).__name__}: {e}"[:500]
        else:
            results.append(CaptionResult(None, error))
    return results


def restart_actor(error: EngineDead, exit=os._exit) -> None:
    """End this actor's process so that Ray starts a fresh one (a new CUDA context and engine) and
    retries its chunk there: Ray Data's actors restart on a crash, not on a raised exception.
    The pipeline bounds the restarts (recaption.placement.actor_options)."""
    log.error("%s; exiting so that Ray restarts this actor and retries the chunk", error)
    logging.shutdown()
    exit(EXIT_ENGINE_DEAD)


EXIT_ENGINE_DEAD = 75  # EX_TEMPFAIL


class BackendUnavailable(ImportError):
    pass


VLLM_VENV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-vllm")


def vllm_python(configured: Optional[str] = None) -> Optional[str]:
    """The Python of the environment that has vLLM: recaption.vllm.python, else this one when it
    imports vllm, else scripts/setup_vllm.sh's .venv-vllm; None when there is none. vLLM pins its
    own torch and transformers, so it normally lives apart from the training environment."""
    if configured:
        if not os.access(configured, os.X_OK):
            raise BackendUnavailable(f"recaption.vllm.python={configured!r} is not an executable Python")
        return configured
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    candidate = os.path.join(VLLM_VENV, "bin", "python")
    return candidate if os.access(candidate, os.X_OK) else None


def select_backend(requested: str, cluster_gpus: float = 0.0, python: Optional[str] = None) -> str:
    """'auto': vLLM when the cluster the actors run on has GPUs (not this driver: `ray job
    submit` drivers often run on a CPU head) and a vLLM environment exists; else transformers.
    python: vllm_python()'s answer."""
    if requested == "auto":
        return "vllm" if cluster_gpus > 0 and python is not None else "transformers"
    if requested == "vllm" and python is None:
        raise BackendUnavailable("recaption.backend is 'vllm' but no environment has vllm: run "
                                 "scripts/setup_vllm.sh (or set recaption.vllm.python), or set "
                                 "recaption.backend: transformers")
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
