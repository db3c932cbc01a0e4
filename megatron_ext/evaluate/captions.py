"""Caption loss with matched vs shuffled images on held-out captioned images (any data set,
evaluate/data.py; for easy-VQA the TEST images, never trained on, with the alt-text their own
questions give, "a red triangle", megatron_ext/data/easyvqa.py alt_text), in the training prompt
format (data.prompt as the user turn, the caption + end-of-turn as the assistant's). Nats per
caption token; an image-blind model scores the same on both."""

from __future__ import annotations

from megatron_ext.data.easyvqa import alt_text, load_split
from megatron_ext.evaluate.vqa import derangement
from megatron_ext.training.config import DEFAULT_PROMPT  # training's data.prompt default


def captioned_test_images(image_ids: set | None = None) -> list[tuple[int, str, str]]:
    """(image id, path, caption) of the test images, those in `image_ids` when given."""
    return [(s.image_id, s.image_path, alt_text(s)) for s in load_split("test")
            if image_ids is None or s.image_id in image_ids]


def caption_loss(scorer, images: list[tuple], prompt: str = DEFAULT_PROMPT,
                 batch_size: int = 16, seed: int = 0, progress=None) -> dict:
    """images: (key, image path or PIL image, caption)."""
    other = derangement([i for i, _, _ in images], seed)
    path = {i: p for i, p, _ in images}
    rendered = scorer.prompt(prompt)
    out = {}
    for view, paths in (("matched", [p for _, p, _ in images]),
                        ("shuffled", [path[other[i]] for i, _, _ in images])):
        bar = progress(len(images), f"caption loss ({view})") if progress else None
        nats, tokens = 0.0, 0
        for start in range(0, len(images), batch_size):
            chunk = slice(start, start + batch_size)
            captions = [c for _, _, c in images[chunk]]
            for logp, n in scorer.continuation_logprobs([rendered] * len(captions), paths[chunk], captions):
                nats, tokens = nats - logp, tokens + n
            if bar is not None:
                bar.update(len(captions))
        if bar is not None:
            bar.close()
        out[view] = nats / tokens
    out["shuffled_minus_matched"] = out["shuffled"] - out["matched"]
    out["images"], out["prompt"] = len(images), prompt
    return out
