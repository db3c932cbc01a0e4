"""Qwen2.5-VL through vLLM's offline API (`LLM.generate` with multi-modal prompts). vLLM is
imported only when this backend is built: it needs CUDA and cannot run on the CPU machines, so
the request building below is kept in plain functions that the tests check."""
from __future__ import annotations

from typing import List

from recaption.base import Captioner, captioner_name
from recaption.prompts import chat_prompt


def engine_kwargs(rc) -> dict:
    """Arguments for vllm.LLM(...)."""
    v = rc.vllm
    return dict(model=rc.model, tensor_parallel_size=v.tensor_parallel_size, max_model_len=v.max_model_len,
                gpu_memory_utilization=v.gpu_memory_utilization, max_num_seqs=v.max_num_seqs, dtype=v.dtype,
                seed=rc.seed, limit_mm_per_prompt={"image": 1},
                mm_processor_kwargs={"min_pixels": rc.min_pixels, "max_pixels": rc.max_pixels})


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
            raise ImportError(f"recaption.backend 'vllm' needs vllm on a CUDA machine: {e}") from e
        self.name = captioner_name(rc)
        self.llm = LLM(**engine_kwargs(rc))
        self.sampling = SamplingParams(**sampling_kwargs(rc))

    def caption_batch(self, images, instructions: List[str]) -> List[str]:
        outputs = self.llm.generate(build_requests(images, instructions), self.sampling, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]
