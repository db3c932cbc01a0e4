"""Scores for bench.sweep: easy-VQA accuracy per kind of question, on the validation split (TRAIN
images the main job does not serve) for the grid, and from an evaluation's predictions for the
test questions of the final runs.

Kinds: shape and colour (open questions, told by the true answer) and yes/no; on yes/no also the
balanced accuracy (the mean of the accuracy on questions whose answer is yes and on those whose
answer is no), which is 0.5 for any answer that ignores the image."""

from __future__ import annotations

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


def per_kind(answers: list[str], truths: list[str]) -> dict:
    """{overall, kinds: {kind: {n, accuracy}}, yes_no_balanced} of predicted against true answers."""
    hits = [normalize(p) == normalize(t) for p, t in zip(answers, truths)]
    out = dict(n=len(hits), accuracy=sum(hits) / len(hits) if hits else None, kinds={})
    for kind in KINDS:
        sub = [h for h, t in zip(hits, truths) if question_kind(t) == kind]
        out["kinds"][kind] = dict(n=len(sub), accuracy=sum(sub) / len(sub) if sub else None)
    per_answer = [[h for h, t in zip(hits, truths) if t == a] for a in ("yes", "no")]
    out["yes_no_balanced"] = (sum(sum(s) / len(s) for s in per_answer) / 2) if all(per_answer) else None
    return out


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
    out = per_kind(answers, [q.answer for q in questions])
    out["prior"] = per_kind(prior_answers(questions), [q.answer for q in questions])
    return out


def from_predictions(rows: list[dict]) -> dict:
    """per_kind of an evaluation's predictions.jsonl rows (megatron_ext.evaluate): matched,
    shuffled images and prior."""
    truths = [r["answer"] for r in rows]
    return {name: per_kind([r[key] for r in rows], truths)
            for name, key in (("matched", "greedy_matched"), ("shuffled", "greedy_shuffled"), ("prior", "prior"))}
