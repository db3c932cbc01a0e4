"""The image placeholder token of a Hugging Face tokenizer, shared by the training data
(megatron_ext/data/text.py) and the methods' exports."""

from __future__ import annotations

IMAGE_PLACEHOLDER = "<|image_pad|>"  # Qwen2.5's special token for an image position


def image_placeholder(tokenizer) -> str:
    """The token that stands for each image position where the image enters the sequence (VoRA,
    LLaVA): Qwen2.5's <|image_pad|>; a tokenizer without it lends its last added token that is not
    one of its special tokens (SmolLM2: <empty_output>, id 16), one id that no prompt or answer
    holds. Training and every export take it from here, so they agree."""
    vocab = tokenizer.get_vocab()
    if IMAGE_PLACEHOLDER in vocab:
        return IMAGE_PLACEHOLDER
    special = set(tokenizer.all_special_tokens) | {"<|im_start|>", "<|im_end|>"}
    added = [t for t, _ in sorted(tokenizer.get_added_vocab().items(), key=lambda kv: kv[1]) if t not in special]
    if not added:
        raise ValueError(f"the tokenizer has no {IMAGE_PLACEHOLDER} and no spare added token for the image's "
                         f"positions: add {IMAGE_PLACEHOLDER} to it (and a row to the model's vocabulary)")
    return added[-1]

