"""What the easy-VQA evaluation computes, with scorers whose answers are known."""

import pytest

from megatron_ext.evaluate.vqa import (QuestionPrior, derangement, evaluate_vqa, normalize,
                                       shuffled_paths, heldout_questions)
from scorers import OracleScorer, PriorScorer


@pytest.fixture(scope="module")
def prior():
    return QuestionPrior.from_train()


@pytest.fixture(scope="module")
def answers():
    from megatron_ext.data.easyvqa import answers

    return answers()


def test_normalize_drops_case_punctuation_and_articles():
    assert normalize("The Red.") == "red"
    assert normalize("  a   circle!\n") == "circle"
    assert normalize("Yes, it is") == "yes it is"  # not a match for "yes": only exact answers count
    assert normalize("theta") == "theta"            # articles are words, not prefixes


def test_prior_is_the_majority_train_answer_with_a_global_fallback():
    p = QuestionPrior([("is it red?", "no"), ("is it red?", "yes"), ("is it red?", "no"),
                       ("what shape?", "circle")])
    assert p("is it red?") == "no"
    assert p("what shape?") == "circle"
    assert p("never asked?") == "no"  # the most frequent answer overall


def test_derangement_moves_every_image_and_is_fixed_by_its_seed():
    keys = list(range(50)) * 3
    d = derangement(keys, seed=0)
    assert sorted(d) == sorted(d.values()) == list(range(50))
    assert all(k != v for k, v in d.items())
    assert d == derangement(keys, seed=0) and d != derangement(keys, seed=1)
    with pytest.raises(ValueError, match="at least 2 images"):
        derangement([7, 7])


def test_shuffled_images_replace_each_image_consistently():
    qs = heldout_questions(40)
    shuffled = shuffled_paths(qs)
    for q, s in zip(qs, shuffled):
        assert s != q.image_path
    by_image = {}
    for q, s in zip(qs, shuffled):
        by_image.setdefault(q.image_id, set()).add(s)
    assert all(len(v) == 1 for v in by_image.values())


def test_an_oracle_fed_the_answers_scores_one(prior, answers):
    qs = heldout_questions(300)
    summary, records = evaluate_vqa(OracleScorer(qs), qs, prior, answers, batch_size=64)
    assert summary["greedy"]["matched"] == 1.0 and summary["ranking"]["matched"] == 1.0
    # shown another image it answers for that image: right only where both images agree
    assert summary["greedy"]["shuffled"] < 0.3 and summary["ranking"]["shuffled"] < 0.3
    assert summary["image_adds"]["greedy_vs_shuffled"] == 1.0 - summary["greedy"]["shuffled"]
    assert summary["image_adds"]["greedy_vs_prior"] == pytest.approx(1.0 - summary["prior"])
    assert len(records) == 300 and records[0]["greedy_matched"] == f"The {qs[0].answer.capitalize()}."


def test_an_image_blind_model_scores_the_prior_on_matched_and_shuffled_images(prior, answers):
    qs = heldout_questions()
    assert len(qs) == 9673
    summary, _ = evaluate_vqa(PriorScorer(prior), qs, prior, answers, batch_size=512)
    for kind in ("greedy", "ranking"):
        assert summary[kind]["matched"] == summary[kind]["shuffled"] == summary["prior"]
        assert summary["image_adds"][f"{kind}_vs_shuffled"] == 0.0
    # the question-only prior on the whole test split (0.67 measured by hand for the design)
    assert 0.64 < summary["prior"] < 0.70
    assert summary["stderr"] < 0.01


def test_greedy_alone_skips_the_13_answer_ranking(prior, answers):
    """--vqa greedy: the ranking's 13 forwards per question are not run, and not reported."""
    qs = heldout_questions(40)
    scorer = OracleScorer(qs)
    calls = []
    scorer.continuation_logprobs = lambda *a, **k: calls.append(a) or []
    summary, records = evaluate_vqa(scorer, qs, prior, answers, batch_size=16, kinds=("greedy",))
    assert not calls and "ranking" not in summary and summary["greedy"]["matched"] == 1.0
    assert set(summary["image_adds"]) == {"greedy_vs_shuffled", "greedy_vs_prior"}
    assert "ranking_matched" not in records[0]
    with pytest.raises(ValueError, match="choose from"):
        evaluate_vqa(scorer, qs, prior, answers, kinds=("beam",))


def test_placeholders_count_as_visual_tokens_in_the_sequence():
    """LLaVA and VoRA processors insert image placeholders: those are the visual tokens, in the
    sequence; a generator's features are not."""
    from types import SimpleNamespace

    import torch

    from megatron_ext.evaluate.cost import visual_tokens

    class Tok:
        def convert_tokens_to_ids(self, token):
            return 7

    def scorer(image_token, ids, feats):
        return SimpleNamespace(sees_images=True, processor=SimpleNamespace(image_token=image_token),
                               tokenizer=Tok(), _inputs=lambda t, i: {"input_ids": ids, "pixel_values": None},
                               model=SimpleNamespace(visual_features=lambda p: torch.zeros(1, feats, 4)))

    assert visual_tokens(scorer("<img>", torch.tensor([[7] * 25 + [1, 2]]), 49), None) == (25, True)
    assert visual_tokens(scorer(None, torch.tensor([[1, 2]]), 49), None) == (49, False)
