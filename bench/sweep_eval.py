"""Scores for bench.sweep: easy-VQA accuracy per kind of question, on the validation split (TRAIN
images the main job does not serve) for the grid, and from an evaluation's predictions for the
test questions of the final runs.

Kinds: shape and colour (open questions, told by the true answer) and yes/no; on yes/no also the
balanced accuracy: per question template (mainjob.data.template: 'is there a <colour> shape?'),
the mean of the accuracy on its questions whose answer is yes and on those whose answer is no,
averaged over the templates. Any answer read off the words alone scores 0.5 on it, the
question-only prior included (the plain yes/no accuracy of the prior is 0.83)."""

from __future__ import annotations

import statistics

from mainjob.data import template
from megatron_ext.evaluate.vqa import Question, QuestionPrior, normalize

KINDS = ("shape", "colour", "yes/no")
SHAPES = ("circle", "rectangle", "triangle")


def question_kind(answer: str) -> str:
    return "yes/no" if answer in ("yes", "no") else "shape" if answer in SHAPES else "colour"


def validation_questions(first_image: int, images: int) -> list[Question]:
    """The questions of easy-VQA TRAIN images first_image .. first_image + images - 1 (the main
    job serves the first SIZES[...].easyvqa_images, so these are held out of training)."""
    from megatron_ext.data.easyvqa import load_split

    train = load_split("train")
    if first_image + images > len(train):
        raise ValueError(f"validation images {first_image}..{first_image + images - 1}: the train split has "
                         f"{len(train)}; pass a smaller --val-images")
    return [Question(q, a, s.image_id, s.image_path) for s in train[first_image:first_image + images]
            for q, a in s.pairs]


def per_kind(answers: list[str], truths: list[str], questions: list[str]) -> dict:
    """{accuracy, kinds: {kind: {n, accuracy}}, yes_no_balanced, yes_no_templates} of predicted
    against true answers of the questions."""
    hits = [normalize(p) == normalize(t) for p, t in zip(answers, truths)]
    out = dict(n=len(hits), accuracy=sum(hits) / len(hits) if hits else None, kinds={})
    for kind in KINDS:
        sub = [h for h, t in zip(hits, truths) if question_kind(t) == kind]
        out["kinds"][kind] = dict(n=len(sub), accuracy=sum(sub) / len(sub) if sub else None)
    by_template: dict = {}
    for h, t, q in zip(hits, truths, questions):
        if t in ("yes", "no"):
            by_template.setdefault(template(q), {"yes": [], "no": []})[t].append(h)
    balanced = {tp: (sum(c["yes"]) / len(c["yes"]) + sum(c["no"]) / len(c["no"])) / 2
                for tp, c in by_template.items() if c["yes"] and c["no"]}
    out["yes_no_balanced"] = sum(balanced.values()) / len(balanced) if balanced else None
    out["yes_no_templates"] = len(balanced)
    return out


def selection_score(validation: dict) -> float:
    """What the grid chooses by: the mean of the accuracy on shape, the accuracy on colour and the
    balanced accuracy on yes/no. The plain accuracy is 73% yes/no questions, which every cell so far
    answers near chance: its differences between cells were mostly that coin (one standard error
    0.03 on 258 questions), not image reading (docs/RESULTS.md, "The choice")."""
    k = validation["kinds"]
    return statistics.fmean([k["shape"]["accuracy"], k["colour"]["accuracy"], validation["yes_no_balanced"]])


def prior_answers(questions: list[Question]) -> list[str]:
    """The question-only prior (the majority TRAIN answer per question string; the train split
    includes the validation images, so on validation this prior is slightly optimistic)."""
    prior = QuestionPrior.from_train()
    return [prior(q.text) for q in questions]


def score_export(hf_dir, questions: list[Question], batch_size: int = 16) -> dict:
    """Greedy answers of an export on the questions with their own images: per_kind's summary,
    and the answers (for the record)."""
    from megatron_ext.evaluate.scorer import ExportScorer
    from megatron_ext.evaluate.vqa import greedy_answers

    scorer = ExportScorer(hf_dir)
    answers = greedy_answers(scorer, questions, [q.image_path for q in questions], batch_size, 8)
    truths, texts = [q.answer for q in questions], [q.text for q in questions]
    out = per_kind(answers, truths, texts)
    out["prior"] = per_kind(prior_answers(questions), truths, texts)
    out["answers"] = [[q.image_id, q.text, q.answer, a] for q, a in zip(questions, answers)]
    return out


def from_predictions(rows: list[dict]) -> dict:
    """per_kind of an evaluation's predictions.jsonl rows (megatron_ext.evaluate): matched,
    shuffled images and prior."""
    truths, texts = [r["answer"] for r in rows], [r["question"] for r in rows]
    return {name: per_kind([r[key] for r in rows], truths, texts)
            for name, key in (("matched", "greedy_matched"), ("shuffled", "greedy_shuffled"), ("prior", "prior"))}
