"""Step 4: export the last stage's checkpoint to a Hugging Face folder (python -m
megatron_ext.export), score it on held-out easy-VQA test questions with the evaluation command
(python -m megatron_ext.evaluate: accuracy with the right images, with shuffled images, and the
question-only prior), and answer one held-out question with the full model and, for ROSE and VLoRA,
with the papers' inference mode (merge_vision: a plain Llama with the image in its weights).
Greedy decoding of both must give the same tokens."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from mainjob import proc

log = logging.getLogger("mainjob.inference")


def export(out: Path, run_dir: str, tokenizer: Path, echo: bool = True) -> tuple[Path, float]:
    hf_dir = out / "hf"
    wall = proc.run([sys.executable, "-m", "megatron_ext.export", "--checkpoint", run_dir, "--out", hf_dir,
                     "--tokenizer", tokenizer, "--overwrite"],  # its own folder: a rerun refreshes it
                    out / "logs" / "export.log", "export", echo=echo)
    return hf_dir, wall


def evaluate(out: Path, hf_dir: Path, questions: int, echo: bool = True) -> dict:
    """The first `questions` easy-VQA test questions (images the pipeline never served), greedy
    answers: -> the evaluation's vqa summary (greedy matched/shuffled, prior, stderr)."""
    report = out / "report" / "evaluation"
    proc.run([sys.executable, "-m", "megatron_ext.evaluate", f"{out.name}={hf_dir}", "--limit", str(questions),
              "--vqa", "greedy", "--parts", "vqa", "--out", report],
             out / "logs" / "evaluate.log", "evaluate", echo=echo)
    vqa = json.loads((report / "results.json").read_text())["models"][out.name]["vqa"]
    return dict(vqa, results=str(report / "results.md"))


def held_out_question():
    """easy-VQA's first test image and its first question (the test split is never served)."""
    from megatron_ext.data import easyvqa

    sample = easyvqa.load_split("test")[0]
    question, answer = sample.pairs[0]
    return sample.image_path, question, answer


def answer(hf_dir: Path, image_path: str, question: str, max_new_tokens: int = 8) -> dict:
    import torch
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoProcessor

    from megatron_ext.methods import get_method

    processor = AutoProcessor.from_pretrained(hf_dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)  # as trained
    with Image.open(image_path) as im:
        inputs = processor(images=im.convert("RGB"), text=text, return_tensors="pt")
    n_prompt = inputs["input_ids"].shape[1]
    greedy = dict(max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False)
    t0 = time.time()
    with torch.no_grad():
        ids = model.generate(**inputs, **greedy)[0, n_prompt:]
    result = dict(method=model.config.method, question=question, tokens=ids.tolist(),
                  answer=processor.decode(ids, skip_special_tokens=True).strip(),
                  generate_s=round(time.time() - t0, 2))
    if not get_method(model.config.method).visual_tokens_in_sequence:
        # the papers' inference mode: the image merged into the weights of a plain Llama. Its
        # logits along the answer must equal the full model's (greedy tokens could differ only at a tie)
        full = torch.cat([inputs["input_ids"], ids[None]], dim=1)
        with torch.no_grad():
            merged = model.merge_vision(inputs["pixel_values"])
            merged_ids = merged.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                         **greedy)[0, n_prompt:]
            diff = merged(input_ids=full).logits - model(input_ids=full, pixel_values=inputs["pixel_values"]).logits
        result.update(merged_class=type(merged).__name__, merged_tokens=merged_ids.tolist(),
                      merged_equal=merged_ids.tolist() == ids.tolist(),
                      merged_max_logit_diff=float(diff.abs().max()))
    log.info("held-out question (%s): %r -> %r", result["method"], question, result["answer"])
    return result
