"""Does a model's yes/no answer carry the image even where its greedy answer sits at chance? The
margin log p(yes) - log p(no) of each validation yes/no question, scored as a ranking (AUC: the
chance that a question whose answer is yes gets a larger margin than one whose answer is no),
with the question's own image and with a shuffled one, pooled by the template's polarity
("is there a red shape?" against "is there not a red shape?") and against whether the named
attribute is in the image (the answer with the negation undone).

    python -m bench.yes_no_margin NAME=EXPORT [NAME=EXPORT ...] [--val-images 40] [--json PATH]

AUC 0.5: the margin does not follow it; 1.0: it orders every pair right; below 0.5: reversed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import machine_load
from bench.sweep_eval import validation_questions
from mainjob.data import template
from megatron_ext.evaluate.scorer import ExportScorer
from megatron_ext.evaluate.vqa import derangement

FIRST_IMAGE = 600  # the sweep's validation images: the TRAIN images after the main job's 600


def negated(question: str) -> bool:
    return " not " in question or question.startswith("is no ")


def auc(scores: list[float], positive: list[bool]) -> float | None:
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return None
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def margins(scorer: ExportScorer, questions, images, batch_size: int = 16) -> list[float]:
    out = []
    for i in range(0, len(questions), batch_size):
        batch, ims = questions[i:i + batch_size], images[i:i + batch_size]
        prompts = [scorer.prompt(q.text) for q in batch]
        yes = scorer.continuation_logprobs(prompts, ims, ["yes"] * len(batch))
        no = scorer.continuation_logprobs(prompts, ims, ["no"] * len(batch))
        out += [y[0] - n[0] for y, n in zip(yes, no)]
    return out


def analyse(questions, matched: list[float], shuffled: list[float]) -> dict:
    truth = [q.answer == "yes" for q in questions]
    present = [t != negated(q.text) for q, t in zip(questions, truth)]  # the attribute is in the image

    def both(select, label):
        idx = [i for i, q in enumerate(questions) if select(q)]
        return dict(n=len(idx), matched=auc([matched[i] for i in idx], [label[i] for i in idx]),
                    shuffled=auc([shuffled[i] for i in idx], [label[i] for i in idx]))

    return {
        "answer, all templates": both(lambda q: True, truth),
        "answer, positive templates": both(lambda q: not negated(q.text), truth),
        "answer, negated templates": both(lambda q: negated(q.text), truth),
        "attribute present, colour templates": both(lambda q: "<colour>" in template(q.text), present),
        "attribute present, shape templates": both(lambda q: "<shape>" in template(q.text), present),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("exports", nargs="+", help="NAME=EXPORT_FOLDER")
    p.add_argument("--val-images", type=int, default=40)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    questions = [q for q in validation_questions(FIRST_IMAGE, args.val_images) if q.answer in ("yes", "no")]
    paths = {q.image_id: q.image_path for q in questions}
    other = derangement(sorted(paths), seed=0)
    results = {"questions": len(questions), "load": machine_load(), "models": {}}
    for spec in args.exports:
        name, folder = spec.split("=", 1)
        scorer = ExportScorer(folder)
        matched = margins(scorer, questions, [q.image_path for q in questions])
        shuffled = margins(scorer, questions, [paths[other[q.image_id]] for q in questions])
        results["models"][name] = dict(export=folder, auc=analyse(questions, matched, shuffled))
        print(f"{name} ({folder}), {len(questions)} yes/no validation questions: AUC of log p(yes) - log p(no)")
        for label, r in results["models"][name]["auc"].items():
            print(f"  {label:38s} n={r['n']:4d}  matched {r['matched']:.3f}  shuffled {r['shuffled']:.3f}")
    print(results["load"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
