"""Captioning instructions and the Qwen2.5-VL chat framing shared by every backend."""
from __future__ import annotations

PRESETS = {
    # ROSE stage 2 trains on detailed recaptions of DataComp images.
    "detailed": "Describe this image in detail. Mention the main objects, their attributes and positions, "
                "any visible text, the setting and the style of the image.",
    "short": "Write a one-sentence caption for this image.",
    "alt_text_aware": "Here is the image's original alt-text: \"{alt_text}\". Write a detailed, factual "
                      "description of the image, keeping facts from the alt-text only where the image shows them.",
}
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def resolve_prompt(prompt: str) -> str:
    """A preset name, or the instruction text itself."""
    return PRESETS.get(prompt, prompt)


def instruction(prompt: str, alt_text: str = "") -> str:
    text = resolve_prompt(prompt)
    return text.replace("{alt_text}", alt_text.replace("\n", " ")[:500]) if "{alt_text}" in text else text


def chat_prompt(instruction_text: str) -> str:
    """Qwen2.5-VL chat format with one image slot. The backend (or vLLM) expands <|image_pad|>
    to the image's token count."""
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{IMAGE_PLACEHOLDER}{instruction_text}<|im_end|>\n"
            "<|im_start|>assistant\n")
