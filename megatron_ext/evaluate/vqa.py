"""easy-VQA test accuracy of a scorer (megatron_ext/evaluate/scorer.py, or anything with its
prompt / generate / continuation_logprobs), with the controls that say what the image adds:

  greedy    the generated answer, normalised (lower case, punctuation and articles dropped), equals
            the normalised true answer;
  ranking   the true answer has the highest log-likelihood among the 13 answers: the SUM of the
            log-probabilities of the answer's tokens and the end-of-turn token after it (the sum,
            not the mean, so a long answer pays for every token it adds, as generation does);
  shuffled  the same with every question shown another image (a fixed derangement of the images);
  prior     the question alone: the majority TRAIN answer for each question string, falling back
            to the global majority for a question never asked in training.

What the image adds is matched minus shuffled (the same model without the right image) and
matched minus prior (the best image-blind answer).

Per kind of question (Question.kind; for easy-VQA shape, colour and yes/no, evaluate/data.py),
`per_kind` holds the same numbers over that kind's questions; `yes_no_balanced` is the mean of the
accuracies on questions whose true answer is yes and on those whose answer is no (a model that
always says "no" scores 0.5 there, whatever the share of no answers).
"""

from __future__ import annotations

import math
import random
import string
from collections import Counter
from dataclasses import dataclass

from megatron_ext.data.easyvqa import load_split
from megatron_ext.evaluate.data import from_easyvqa

ARTICLES = {"a", "an", "the"}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> str:
    words = text.lower().translate(_PUNCT).split()
    return " ".join(w for w in words if w not in ARTICLES)


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    image_id: int
    image_path: object  # a path or a PIL image
    kind: str = ""      # shape, colour, yes/no, ... (per-kind accuracies)


def heldout_questions(limit: int | None = None) -> list[Question]:
    """The first `limit` easy-VQA test questions, in image order (all 9,673 without a limit)."""
    return questions_of(from_easyvqa(), limit)


def questions_of(samples: list, limit: int | None = None) -> list[Question]:
    """The first `limit` question-answer pairs of evaluate/data.py samples, in sample order."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: give a positive number of questions")
    out = [Question(p.question, p.answer, s.key, s.image, p.kind) for s in samples for p in s.qa]
    return out[:limit]


class QuestionPrior:
    """The majority train answer per question string (ties: the answer seen first)."""

    def __init__(self, pairs):
        per_question: dict[str, Counter] = {}
        overall: Counter = Counter()
        for q, a in pairs:
            per_question.setdefault(q, Counter())[a] += 1
            overall[a] += 1
        if not overall:
            raise ValueError("the question prior needs training pairs")
        self.answers = {q: c.most_common(1)[0][0] for q, c in per_question.items()}
        self.fallback = overall.most_common(1)[0][0]

    @classmethod
    def from_train(cls) -> "QuestionPrior":
        return cls(p for s in load_split("train") for p in s.pairs)

    def __call__(self, question: str) -> str:
        return self.answers.get(question, self.fallback)


def derangement(keys: list, seed: int = 0) -> dict:
    """key -> another key: one random cycle through all keys, so no key maps to itself."""
    unique = sorted(set(keys))
    if len(unique) < 2:
        raise ValueError("shuffling images needs questions about at least 2 images: raise --limit")
    order = unique[:]
    random.Random(seed).shuffle(order)
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


def shuffled_paths(questions: list[Question], seed: int = 0) -> list[str]:
    """Each question's image replaced by another image of the set (the same one for all
    questions of an image)."""
    path = {q.image_id: q.image_path for q in questions}
    other = derangement([q.image_id for q in questions], seed)
    return [path[other[q.image_id]] for q in questions]


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def greedy_answers(scorer, questions: list[Question], images: list, batch_size: int,
                   max_new_tokens: int, bar=None) -> list[str]:
    out = []
    for idx in _chunks(len(questions), batch_size):
        out += scorer.generate([questions[i].text for i in idx], [images[i] for i in idx], max_new_tokens)
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return out


def ranked_answers(scorer, questions: list[Question], images: list, answers: tuple, batch_size: int,
                   bar=None) -> list[str]:
    """The answer with the highest summed log-probability, per question."""
    rows = [(i, a) for i in range(len(questions)) for a in answers]
    prompts = {}
    scores: dict[int, list] = {}
    for idx in _chunks(len(rows), batch_size):
        chunk = [rows[r] for r in idx]
        for i, _ in chunk:
            prompts.setdefault(i, scorer.prompt(questions[i].text))
        result = scorer.continuation_logprobs([prompts[i] for i, _ in chunk], [images[i] for i, _ in chunk],
                                              [a for _, a in chunk])
        for (i, a), (logp, _) in zip(chunk, result):
            scores.setdefault(i, []).append((logp, a))
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return [max(scores[i], key=lambda s: s[0])[1] for i in range(len(questions))]


def accuracy(predicted: list[str], questions: list[Question]) -> float:
    return sum(normalize(p) == normalize(q.answer) for p, q in zip(predicted, questions)) / len(questions)


def balanced_yes_no(predicted: list[str], questions: list[Question]) -> float | None:
    """Mean of the accuracy on yes-questions and on no-questions; None without both."""
    per = []
    for truth in ("yes", "no"):
        idx = [i for i, q in enumerate(questions) if normalize(q.answer) == truth]
        if not idx:
            return None
        per.append(accuracy([predicted[i] for i in idx], [questions[i] for i in idx]))
    return sum(per) / 2


def _accuracies(predictions: dict, prior_answers: list, questions: list, idx: list, kinds: tuple,
                score=accuracy) -> dict:
    """matched / shuffled per decoding kind, prior, and image_adds over the questions at idx."""
    pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
    qs = pick(questions)
    out = {kind: {view: score(pick(predictions[(kind, view)]), qs) for view in ("matched", "shuffled")}
           for kind in kinds}
    out["prior"] = score(pick(prior_answers), qs)
    out["image_adds"] = {}
    for kind in kinds:
        m, sh = out[kind]["matched"], out[kind]["shuffled"]
        out["image_adds"][f"{kind}_vs_shuffled"] = None if m is None or sh is None else m - sh
        out["image_adds"][f"{kind}_vs_prior"] = None if m is None or out["prior"] is None else m - out["prior"]
    out["questions"] = len(idx)
    return out


KINDS = ("greedy", "ranking")


def _name(image, image_id) -> str:
    """A record's image: its path, or its key in the data set when it has none (an image in memory)."""
    return image if isinstance(image, str) else f"#{image_id}"


def evaluate_vqa(scorer, questions: list[Question], prior: QuestionPrior, answers: tuple,
                 batch_size: int = 16, max_new_tokens: int = 8, seed: int = 0,
                 progress=None, kinds: tuple = KINDS) -> tuple[dict, list[dict]]:
    """-> (summary, one record per question). `progress(total, desc)` makes a tqdm-like bar.
    `kinds`: greedy and/or ranking (ranking scores all 13 answers: 13 forwards per question)."""
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"VQA kinds {kinds}: choose from {KINDS}")
    views = {"matched": [q.image_path for q in questions], "shuffled": shuffled_paths(questions, seed)}
    other_id = derangement([q.image_id for q in questions], seed)
    predictions: dict = {}
    for view, images in views.items():
        if "greedy" in kinds:
            bar = progress(len(questions), f"easy-VQA greedy ({view})") if progress else None
            predictions[("greedy", view)] = greedy_answers(scorer, questions, images, batch_size,
                                                           max_new_tokens, bar)
        if "ranking" in kinds:
            bar = progress(len(questions) * len(answers), f"easy-VQA ranking ({view})") if progress else None
            predictions[("ranking", view)] = ranked_answers(scorer, questions, images, answers, batch_size, bar)
    prior_answers = [prior(q.text) for q in questions]
    summary = {kind: {view: accuracy(predictions[(kind, view)], questions) for view in views}
               for kind in kinds}
    summary["prior"] = accuracy(prior_answers, questions)
    summary["image_adds"] = {}
    for kind in kinds:
        matched = summary[kind]["matched"]
        summary["image_adds"][f"{kind}_vs_shuffled"] = matched - summary[kind]["shuffled"]
        summary["image_adds"][f"{kind}_vs_prior"] = matched - summary["prior"]
    n = len(questions)
    # the binomial standard error of an accuracy near the prior's: the noise floor of a difference
    summary["stderr"] = math.sqrt(max(summary["prior"] * (1 - summary["prior"]), 1e-12) / n)
    summary["questions"], summary["images"] = n, len({q.image_id for q in questions})
    by_kind: dict = {}
    for i, q in enumerate(questions):
        by_kind.setdefault(q.kind or "all", []).append(i)
    summary["per_kind"] = {k: _accuracies(predictions, prior_answers, questions, idx, kinds)
                           for k, idx in sorted(by_kind.items())}
    yes_no = [i for i, q in enumerate(questions) if normalize(q.answer) in ("yes", "no")]
    summary["yes_no_balanced"] = (_accuracies(predictions, prior_answers, questions, yes_no, kinds,
                                              balanced_yes_no) if yes_no else None)
    summary["ranking_score"] = "sum of answer-token + end-of-turn log-probabilities"
    records = [{"question": q.text, "answer": q.answer, "kind": q.kind, "image_id": q.image_id,
                "shuffled_image": _name(views["shuffled"][i], other_id[q.image_id]), "prior": prior_answers[i],
                **{f"{kind}_{view}": predictions[(kind, view)][i] for kind, view in predictions}}
               for i, q in enumerate(questions)]
    return summary, records
