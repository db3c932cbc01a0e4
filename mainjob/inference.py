"""Step 4: export the last stage's checkpoint to a Hugging Face folder (python -m
megatron_ext.export), load it back with transformers, and caption a held-out image: with the full
model (the image's conditioning computed once, applied at every step) and, for ROSE and VLoRA,
with the papers' inference mode (merge_vision: a plain Qwen2 with the image in its weights).
Greedy decoding of both must give the same tokens."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from mainjob import proc

log = logging.getLogger("mainjob.inference")


def held_out_image(path: Path):
    """An image the pipeline never served: the corpus's generator with a seed outside its range."""
    from pipeline.demo_data import blob_image

    image = blob_image(10**6, 320, 240)
    image.save(path)
    return image


def export(out: Path, run_dir: str, tokenizer: Path, echo: bool = True) -> tuple[Path, float]:
    hf_dir = out / "hf"
    wall = proc.run([sys.executable, "-m", "megatron_ext.export", "--checkpoint", run_dir, "--out", hf_dir,
                     "--tokenizer", tokenizer], out / "logs" / "export.log", "export", echo=echo)
    return hf_dir, wall


def caption(hf_dir: Path, tokenizer: Path, image, prompt: str, max_new_tokens: int = 24) -> dict:
    """`tokenizer`: the directory training tokenised with (for its chat turn)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    from megatron_ext.data.text import HFTokenizer
    from megatron_ext.methods import get_method

    processor = AutoProcessor.from_pretrained(hf_dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True).eval()
    text = HFTokenizer(str(tokenizer)).format_prompt(prompt)  # the chat turn training used
    inputs = processor(images=image, text=text)
    n_prompt = inputs["input_ids"].shape[1]
    greedy = dict(max_new_tokens=max_new_tokens, do_sample=False)
    t0 = time.time()
    with torch.no_grad():
        ids = model.generate(**inputs, **greedy)[0, n_prompt:]
    result = dict(method=model.config.method, prompt=prompt, tokens=ids.tolist(),
                  caption=processor.decode(ids, skip_special_tokens=True), generate_s=round(time.time() - t0, 2))
    if not get_method(model.config.method).visual_tokens_in_sequence:
        # the papers' inference mode: the image merged into the weights of a plain Qwen2. Its logits
        # along the caption must equal the full model's (greedy tokens could differ only at a tie)
        full = torch.cat([inputs["input_ids"], ids[None]], dim=1)
        with torch.no_grad():
            merged = model.merge_vision(inputs["pixel_values"])
            merged_ids = merged.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                         **greedy)[0, n_prompt:]
            diff = (merged(input_ids=full).logits - model(input_ids=full, pixel_values=inputs["pixel_values"]).logits)
        result.update(merged_class=type(merged).__name__, merged_tokens=merged_ids.tolist(),
                      merged_equal=merged_ids.tolist() == ids.tolist(),
                      merged_max_logit_diff=float(diff.abs().max()))
    log.info("held-out caption (%s): %r", result["method"], result["caption"])
    return result
