"""A Hugging Face folder prompted the standard transformers way, the way lmms-eval's generic
`huggingface` chat model prompts it: `processor.apply_chat_template(messages)` with an image part,
then `processor(images=, text=)`, then `model.generate` (or one forward for log-probabilities).

Works on an export (ParamVisionForCausalLM and its processor, or a native LLaVA export:
LlavaForConditionalGeneration) and on a plain causal LM folder (the base LLM: its tokenizer,
prompted with the template an export of it would carry; it sees no image).
"""

from __future__ import annotations

import functools
import inspect
import json
import statistics
import time
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, LogitsProcessor

from megatron_ext.hf import training_text
from megatron_ext.hf.chat_template import chat_template


def _model_class(path: Path, default):
    """The class to load a folder with: its remote code's (auto_map: AutoModelForCausalLM), else
    the transformers class its config names (a native export, e.g. LlavaForConditionalGeneration,
    which AutoModelForCausalLM does not map), else `default` (a plain causal LM)."""
    config = json.loads((path / "config.json").read_text())
    if "auto_map" in config:
        return default
    named = next(iter(config.get("architectures") or []), None)
    return getattr(transformers, named, None) or default if named else default


@functools.lru_cache(maxsize=4096)
def _open(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class _StepClock(LogitsProcessor):
    """Time stamps of generate's steps: it calls its logits processors once per new token, right
    after that step's forward."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


class ExportScorer:
    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: pass an export folder (python -m "
                                    "megatron_ext.export) or a training run directory")
        self.path, self.device = path, torch.device(device)
        self.model = _model_class(path, AutoModelForCausalLM).from_pretrained(path, trust_remote_code=True, dtype=dtype)
        self.training = training_text.read(path)  # the export's data.prompt and task, if recorded
        self.model.to(self.device).eval()
        self.sees_images = "pixel_values" in inspect.signature(self.model.forward).parameters
        if self.sees_images:
            self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
            self.tokenizer = self.processor.tokenizer
            if not self.processor.chat_template:
                raise ValueError(f"{path} carries no chat template (chat_template.jinja): re-export it "
                                 "with python -m megatron_ext.export")
            self._template = None  # the processor's own
        else:  # the base LLM: the template its export would carry, no image
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self._template = chat_template(self.tokenizer)
        self.tokenizer.padding_side = "left"  # generation continues every row at the right end
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        im_end = self.tokenizer.get_vocab().get("<|im_end|>")
        self.end_of_turn = "<|im_end|>" if im_end is not None else self.tokenizer.eos_token
        self.end_of_turn_id = im_end if im_end is not None else self.tokenizer.eos_token_id
        self.latency = {"ttft_s": [], "per_token_s": []}

    # -- prompting -------------------------------------------------------------------------------
    def prompt(self, text: str) -> str:
        """One user turn with an image part, rendered by the export's chat template."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        owner = self.processor if self.processor is not None else self.tokenizer
        kwargs = {} if self._template is None else {"chat_template": self._template}
        return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)

    def _inputs(self, texts: list[str], images: list | None) -> dict:
        """Images are PIL images or paths; a model without vision is given none."""
        if self.processor is not None:
            images = None if images is None else [_open(i) if isinstance(i, (str, Path)) else i for i in images]
            batch = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        else:
            batch = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
            batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
        return {k: v.to(self.device) for k, v in batch.items()}

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, questions: list[str], images: list, max_new_tokens: int = 8) -> list[str]:
        """Greedy answers; records time to first token and per token of this batch."""
        inputs = self._inputs([self.prompt(q) for q in questions], images)
        clock = _StepClock()
        start = time.perf_counter()
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                  eos_token_id=self.end_of_turn_id, pad_token_id=self.tokenizer.pad_token_id,
                                  logits_processor=[clock])
        if clock.stamps:
            self.latency["ttft_s"].append(clock.stamps[0] - start)
            if len(clock.stamps) > 1:
                steps = len(clock.stamps) - 1
                self.latency["per_token_s"].append((clock.stamps[-1] - clock.stamps[0]) / steps)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def latency_summary(self) -> dict:
        return {k: (statistics.median(v) if v else None) for k, v in self.latency.items()}

    # -- likelihoods -----------------------------------------------------------------------------
    @torch.no_grad()
    def continuation_logprobs(self, prompts: list[str], images: list | None,
                              continuations: list[str]) -> list[tuple[float, int]]:
        """(sum of log-probabilities, tokens) of each continuation + the end-of-turn token after its
        rendered prompt: the assistant turn exactly as training scored it (the prompt and the
        answer tokenised apart, megatron_ext/data/text.py encode_pair)."""
        tails = [self.tokenizer(c, add_special_tokens=False)["input_ids"] + [self.end_of_turn_id]
                 for c in continuations]
        texts = [p + c + self.end_of_turn for p, c in zip(prompts, continuations)]
        batch = self._inputs(texts, images)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        for row, tail in zip(ids, tails):  # the joint tokenisation must end with the tail's tokens
            if row[-len(tail):].tolist() != tail:
                raise ValueError(f"the tokenizer merges the answer {self.tokenizer.decode(tail)!r} "
                                 "with its prompt: its tokens differ from the answer's own")
        # left padding: positions count real tokens only, as without padding
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(t) for t in tails) + 1  # the LM head runs on the positions scored only
        logits = self.model(**batch, logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, -(keep - 1):, None])[..., 0]
        return [(float(logp[i, -len(t):].sum()), len(t)) for i, t in enumerate(tails)]

    @torch.no_grad()
    def text_nll(self, text: str, window: int = 256) -> tuple[float, int]:
        """(nats, predicted tokens) of plain text (no chat format, no image) in windows of `window`
        tokens; the first token of each window is context only."""
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        nats, count = 0.0, 0
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window][None].to(self.device)
            if chunk.shape[1] < 2:
                break
            logits = self.model(input_ids=chunk).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
            nats, count = nats + float(nll), count + chunk.shape[1] - 1
        return nats, count
