"""The evaluation on a real tiny export, prompted through the standard transformers path. At step
0 ROSE's rotations are the identity, so the export ignores its image: shuffling the images must
change nothing; once its generator has weights, the image must change the caption loss."""

import json

import pytest
import torch

from megatron_ext.evaluate.captions import caption_loss, captioned_test_images
from megatron_ext.evaluate.vqa import QuestionPrior, evaluate_vqa, heldout_questions


@pytest.fixture(scope="module")
def scorer(blind_export):
    from megatron_ext.evaluate.scorer import ExportScorer

    return ExportScorer(blind_export)


@pytest.fixture(scope="module")
def questions():
    qs = heldout_questions(20)  # test images 0 and 1
    return [q for q in qs if q.image_id == 0][:3] + [q for q in qs if q.image_id == 1][:3]


def test_an_image_blind_export_scores_the_same_on_shuffled_images(scorer, questions):
    from megatron_ext.data.easyvqa import answers

    prior = QuestionPrior([(q.text, q.answer) for q in questions])
    summary, records = evaluate_vqa(scorer, questions, prior, answers(), batch_size=39, max_new_tokens=3)
    for r in records:  # answer by answer, not only on average
        assert r["greedy_matched"] == r["greedy_shuffled"]
        assert r["ranking_matched"] == r["ranking_shuffled"]
        assert r["shuffled_image"] != next(q.image_path for q in questions if q.text == r["question"])
    assert summary["image_adds"]["greedy_vs_shuffled"] == summary["image_adds"]["ranking_vs_shuffled"] == 0.0
    loss = caption_loss(scorer, captioned_test_images({0, 1}), batch_size=2)
    assert loss["matched"] == pytest.approx(loss["shuffled"], abs=1e-6)
    assert loss["matched"] > 0


def test_batching_changes_no_answer_and_no_likelihood(scorer, questions):
    texts, images = [q.text for q in questions], [q.image_path for q in questions]
    together = scorer.generate(texts, images, max_new_tokens=4)
    alone = [scorer.generate([t], [i], max_new_tokens=4)[0] for t, i in zip(texts, images)]
    assert together == alone
    prompts = [scorer.prompt(t) for t in texts]
    answers = ["red", "rectangle", "no", "yes", "teal", "circle"]
    batched = scorer.continuation_logprobs(prompts, images, answers)
    for p, i, a, (logp, n) in zip(prompts, images, answers, batched):
        single, tokens = scorer.continuation_logprobs([p], [i], [a])[0]
        assert n == tokens and logp == pytest.approx(single, abs=1e-4)


def test_a_seeing_export_changes_its_caption_loss_with_the_image(blind_export):
    from megatron_ext.evaluate.scorer import ExportScorer

    seeing = ExportScorer(blind_export)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # give the zero-initialised heads to T weights: rotations away from I
        for name, p in sorted(seeing.model.named_parameters()):
            if ".to_T." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    loss = caption_loss(seeing, captioned_test_images({0, 1, 2}), batch_size=3)
    assert abs(loss["shuffled_minus_matched"]) > 1e-3


def test_the_cli_writes_json_markdown_and_plot(blind_export, tmp_path):
    from megatron_ext.evaluate.cli import main

    out = tmp_path / "eval"
    results = main([f"step0={blind_export}", "--out", str(out), "--limit", "12", "--batch-size", "52",
                    "--max-new-tokens", "2", "--text-chars", "3000"])
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    m = on_disk["models"]["step0"]
    assert m["vqa"]["questions"] == 12 and m["vqa"]["images"] == 2
    assert m["vqa"]["greedy"]["matched"] == m["vqa"]["greedy"]["shuffled"]
    assert m["captions"]["images"] == 2 and m["text"]["tokens"] > 300
    assert m["cost"]["llm_gflops"] > 0 and m["cost"]["counted_gflops"] > 0 and m["cost"]["visual_tokens"] == 4
    assert m["latency"]["ttft_s"] > 0
    md = (out / "results.md").read_text()
    assert f"| question-only prior | {m['vqa']['prior']:.3f} |" in md
    assert f"| held-out text perplexity | {m['text']['perplexity']:.2f} |" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 12


def test_cli_names_what_to_fix(tmp_path):
    from megatron_ext.evaluate.cli import main

    with pytest.raises(FileNotFoundError, match="no such export folder or training run"):
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--limit", "4"])
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--out", str(tmp_path / "o"), "--parts", "vqa,bleu"])
