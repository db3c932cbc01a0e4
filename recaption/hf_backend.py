"""Qwen2.5-VL through transformers: runs anywhere (CPU CI, a GPU without vLLM).

No torchvision here, so no Qwen2_5_VLProcessor (its video slot imports it): the tokenizer and
the PIL image processor are used directly, and <|image_pad|> is expanded by hand, as the
processor would do."""
from __future__ import annotations

from typing import List

from recaption.base import Captioner, captioner_name
from recaption.prompts import chat_prompt

IMAGE_PAD = "<|image_pad|>"


class TransformersCaptioner(Captioner):
    def __init__(self, rc):
        import torch
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.torch, self.rc, self.name = torch, rc, captioner_name(rc)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"auto": torch.bfloat16 if self.device == "cuda" else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[rc.dtype]
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(rc.model, dtype=dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(rc.model, padding_side="left")
        self.images = Qwen2VLImageProcessorPil.from_pretrained(rc.model, min_pixels=rc.min_pixels,
                                                               max_pixels=rc.max_pixels)

    def prompts(self, grid_thw, instructions: List[str]) -> List[str]:
        merge = self.images.merge_size ** 2
        return [chat_prompt(ins).replace(IMAGE_PAD, IMAGE_PAD * int(thw.prod() // merge))
                for thw, ins in zip(grid_thw, instructions)]

    def caption_batch(self, images, instructions: List[str]) -> List[str]:
        torch, rc = self.torch, self.rc
        vis = self.images(images=images, return_tensors="pt")
        enc = self.tokenizer(self.prompts(vis["image_grid_thw"], instructions), return_tensors="pt", padding=True)
        sample = rc.temperature > 0
        torch.manual_seed(rc.seed)  # same batch -> same captions, also when sampling
        with torch.inference_mode():
            out = self.model.generate(
                **{k: v.to(self.device) for k, v in enc.items()},
                pixel_values=vis["pixel_values"].to(self.device, self.model.dtype),
                image_grid_thw=vis["image_grid_thw"].to(self.device),
                max_new_tokens=rc.max_new_tokens, do_sample=sample,
                **({"temperature": rc.temperature, "top_p": rc.top_p} if sample else {}),
            )
        new = out[:, enc["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
