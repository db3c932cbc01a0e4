"""Optional CLIP image-text score filter, from a local CLIP checkpoint directory."""
from __future__ import annotations

import io
from typing import List, Optional

import numpy as np


class ClipScorer:
    _cache: dict = {}

    @classmethod
    def get(cls, path: str) -> "ClipScorer":
        # One model per process: Ray reuses worker processes across filter tasks.
        if path not in cls._cache:
            cls._cache[path] = cls(path)
        return cls._cache[path]

    def __init__(self, path: str):
        import torch
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.torch = torch
        self.model = CLIPModel.from_pretrained(path).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.images = CLIPImageProcessor.from_pretrained(path)

    def score(self, images: List[Optional[bytes]], texts: List[str], batch_size: int) -> np.ndarray:
        """Cosine similarity of image and text embeddings; NaN where the image is None (already dropped)."""
        from PIL import Image

        out = np.full(len(images), np.nan)
        idx = [i for i, b in enumerate(images) if b is not None]
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            pil = [Image.open(io.BytesIO(images[i])).convert("RGB") for i in part]
            with self.torch.no_grad():
                px = self.images(images=pil, return_tensors="pt")["pixel_values"]
                tok = self.tokenizer([texts[i] for i in part], padding=True, truncation=True,
                                     max_length=self.model.config.text_config.max_position_embeddings,
                                     return_tensors="pt")
                img = self.model.get_image_features(pixel_values=px)
                txt = self.model.get_text_features(**tok)
                img = getattr(img, "pooler_output", img)
                txt = getattr(txt, "pooler_output", txt)
                img = img / img.norm(dim=-1, keepdim=True)
                txt = txt / txt.norm(dim=-1, keepdim=True)
                out[part] = (img * txt).sum(-1).float().numpy()
        return out
