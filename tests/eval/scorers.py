"""Scorers that need no model, with ExportScorer's interface: they pin down what the evaluation
computes from answers (an oracle must score 1.0; an image-blind prior must score the prior)."""

from megatron_ext.evaluate.vqa import QuestionPrior


class OracleScorer:
    """Knows the answer for every (question, image) pair; answers in a chatty form ("Red.") that
    the normalisation must reduce to the answer."""

    end_of_turn = ""

    def __init__(self, questions):
        self.truth = {(q.text, q.image_path): q.answer for q in questions}

    def prompt(self, text):
        return text

    def _answer(self, question, image):
        return self.truth.get((question, image), "no idea")

    def generate(self, questions, images, max_new_tokens=8):
        return [f"The {self._answer(q, i).capitalize()}." for q, i in zip(questions, images)]

    def continuation_logprobs(self, prompts, images, continuations):
        return [(0.0 if c == self._answer(p, i) else -5.0, 1) for p, i, c in zip(prompts, images, continuations)]


class PriorScorer(OracleScorer):
    """Ignores its image: answers the question-only prior."""

    def __init__(self, prior: QuestionPrior):
        self.prior = prior

    def _answer(self, question, image):
        return self.prior(question)
