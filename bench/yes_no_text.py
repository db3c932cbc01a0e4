"""Can the LLM answer easy-VQA's yes/no questions when the image is given as text, and how many
steps of its own training does it take to learn that? (not a test; docs/RESULTS.md, "Why yes/no
stays at chance")

    python -m bench.yes_no_text probe runs/main/assets/smollm2-135m-instruct
    python -m bench.yes_no_text train runs/main/assets/smollm2-135m-instruct --steps 200 --lr 3e-5
    python -m bench.yes_no_text train runs/main/assets/smollm2-135m-instruct --steps 200 --describe codes

probe  the test split's first 150 images: each yes/no question asked with the image's alt-text in
       the prompt ("The image shows a red circle. Is there a red shape? Answer yes or no.") and
       alone; 'yes' ranked against 'no' at the answer position.
train  the whole LLM fine-tuned on the yes/no pairs of the first 600 TRAIN images (the image as its
       alt-text, yes/no balanced per question template, batch 16, AdamW, the loss on the answer
       token), scored on the first 100 TEST images' yes/no pairs at steps 0, 25, 50, 100, 200, 400.
       --describe codes: the alt-text's colour and shape words replaced by codes ("a tone-3 form-1"),
       one per word, the same for every image: the attribute is in the context, but not as the word
       the question names, as with an image (is the fast learning of the words the LLM matching a
       question word with the same word in its context?).
Scores: accuracy and balanced accuracy per question template (bench.sweep_eval.per_kind).
"""

from __future__ import annotations

import argparse
import collections
import functools
import random
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.sweep_eval import per_kind
from mainjob.data import template
from megatron_ext.data import easyvqa

CHECKPOINTS = (25, 50, 100, 200, 400)


def yes_no_pairs(split: str, images: int) -> list[tuple[str, str, str]]:
    """(alt-text, question, answer) of the yes/no questions of a split's first `images` images."""
    return [(easyvqa.alt_text(s), q, a) for s in easyvqa.load_split(split)[:images]
            for q, a in s.pairs if a in ("yes", "no")]


class YesNoRanker:
    """The LLM's answer to a chat prompt: 'yes' or 'no', whichever scores higher at the answer."""

    def __init__(self, llm: str):
        self.tok = AutoTokenizer.from_pretrained(llm)
        self.model = AutoModelForCausalLM.from_pretrained(llm)
        self.yes, self.no = (self.tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "no"))

    def ids(self, content: str) -> list[int]:
        ids = self.tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        return ids if isinstance(ids, list) else ids["input_ids"]

    @torch.no_grad()
    def answer(self, ids: list[int]) -> str:
        training = self.model.training
        self.model.eval()
        logits = self.model(torch.tensor([ids])).logits[0, -1]
        self.model.train(training)
        return "yes" if logits[self.yes] > logits[self.no] else "no"


def score(answers: list[str], pairs: list) -> dict:
    return per_kind(answers, [a for _, _, a in pairs], [q for _, q, _ in pairs])


def probe(llm: str) -> None:
    ranker = YesNoRanker(llm)
    pairs = yes_no_pairs("test", 150)
    for mode, content in (("with text", lambda d, q: f"The image shows {d}. {q}"), ("question only", lambda d, q: q)):
        answers = [ranker.answer(ranker.ids(content(d, q) + " Answer yes or no.")) for d, q, _ in pairs]
        s = score(answers, pairs)
        print(f"{mode}: {s['n']} yes/no questions, accuracy {s['accuracy']:.3f}, balanced per template "
              f"{s['yes_no_balanced']:.3f}, answers 'yes' {answers.count('yes') / len(answers):.2f}")


def balanced(examples: list) -> list:
    """As many yes as no answers per question template, drawn with `random`."""
    by = collections.defaultdict(lambda: collections.defaultdict(list))
    for ex in examples:
        by[template(ex[2])][ex[1]].append(ex)
    out = []
    for d in by.values():
        n = min(len(d["yes"]), len(d["no"]))
        for a in ("yes", "no"):
            out += random.sample(d[a], n)
    return out


@functools.cache
def _codes() -> dict:
    return {**{w: f"tone-{i}" for i, w in enumerate(easyvqa.colours())},
            **{w: f"form-{i}" for i, w in enumerate(easyvqa.SHAPES)}}


def coded(description: str) -> str:
    """'a red triangle' -> 'a tone-3 form-2': each colour and shape word by a fixed code."""
    return " ".join(_codes().get(w, w) for w in description.split())


def train(llm: str, steps: int, lr: float, batch: int = 16, describe: str = "words") -> None:
    torch.manual_seed(0)
    random.seed(0)
    ranker = YesNoRanker(llm)
    model, pad = ranker.model, ranker.tok.pad_token_id or 0
    show = coded if describe == "codes" else (lambda d: d)
    text = lambda pairs: [(ranker.ids(f"The image shows {show(d)}. {q}"), a, q) for d, q, a in pairs]  # noqa: E731
    examples = balanced(text(yes_no_pairs("train", 600)))
    test = text(yes_no_pairs("test", 100))

    def evaluate() -> float:
        return score([ranker.answer(ids) for ids, _, _ in test], [(None, q, a) for _, a, q in test])["yes_no_balanced"]

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    print(f"train pairs {len(examples)} (balanced), test {len(test)}; step 0 balanced {evaluate():.3f}", flush=True)
    t0 = time.time()
    for step in range(1, steps + 1):
        picked = random.sample(examples, batch)
        length = max(len(ids) for ids, _, _ in picked)
        x = torch.full((batch, length), pad)
        mask = torch.zeros(batch, length, dtype=torch.long)
        for k, (ids, _, _) in enumerate(picked):
            x[k, :len(ids)] = torch.tensor(ids)
            mask[k, :len(ids)] = 1
        last = torch.tensor([len(ids) - 1 for ids, _, _ in picked])
        logits = model(input_ids=x, attention_mask=mask).logits[torch.arange(batch), last]
        target = torch.tensor([ranker.yes if a == "yes" else ranker.no for _, a, _ in picked])
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step in CHECKPOINTS or step == steps:
            print(f"step {step} loss {loss.item():.3f} balanced {evaluate():.3f} ({time.time() - t0:.0f} s)", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("probe", "train"))
    ap.add_argument("llm", help="a Hugging Face LLM folder (the main job's: runs/main/assets/smollm2-135m-instruct)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--describe", choices=("words", "codes"), default="words",
                    help="train: the image's alt-text as it is, or its colour and shape words as codes")
    args = ap.parse_args(argv)
    probe(args.llm) if args.mode == "probe" else train(args.llm, args.steps, args.lr, describe=args.describe)


if __name__ == "__main__":
    main()
