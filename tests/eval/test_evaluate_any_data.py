"""The evaluation on any data (--data): a URL list with labels and question-answer pairs of
several kinds, read like held-out shards; label accuracy by caption ranking with its controls;
per-kind and balanced yes/no accuracies with scorers whose answers are known; native exports load
with the class their config names."""

import json

import pytest
from PIL import Image

from megatron_ext.evaluate.data import YES_NO, easyvqa_kind, from_easyvqa, load, parse_qa
from megatron_ext.evaluate.labels import label_accuracy
from megatron_ext.evaluate.vqa import QuestionPrior, balanced_yes_no, evaluate_vqa, questions_of
from scorers import OracleScorer


@pytest.fixture(scope="module")
def url_list(tmp_path_factory):
    """Six images in two colours, labelled by colour, each with a yes/no and an open question."""
    root = tmp_path_factory.mktemp("anydata")
    rows = ["url,caption,label,qa"]
    for i in range(6):
        colour = ("red", "blue")[i % 2]
        path = root / f"{i}.png"
        Image.new("RGB", (32, 32), colour).save(path)
        qa = json.dumps([["is it red?", "yes" if colour == "red" else "no"], ["what colour?", colour, "colour"]])
        url = path.as_uri() if i % 2 else str(path)  # file:// URLs and plain paths both read
        rows.append(f'{url},a {colour} square,{colour},"{qa.replace(chr(34), chr(34) * 2)}"')
    (root / "urls.csv").write_text("\n".join(rows) + "\n")
    return root / "urls.csv"


def test_a_url_list_reads_images_captions_labels_and_kinds(url_list):
    samples = load(str(url_list))
    assert [s.label for s in samples] == ["red", "blue"] * 3 and samples[1].caption == "a blue square"
    assert samples[0].image.getpixel((0, 0)) == (255, 0, 0)
    assert [(q.kind, q.answer) for q in samples[1].qa] == [(YES_NO, "no"), ("colour", "blue")]
    assert parse_qa('[["how many?", "3"]]')[0].kind == "open"
    assert {easyvqa_kind(a) for a in ("yes", "circle", "teal")} == {YES_NO, "shape", "colour"}
    assert from_easyvqa()[0].qa[0].kind in {YES_NO, "shape", "colour"}


class ColourScorer:
    """Sees the image: ranks a caption by whether it names the image's colour (or is blind)."""

    def __init__(self, blind=False):
        self.blind = blind

    def prompt(self, text):
        return text

    def continuation_logprobs(self, prompts, images, captions):
        out = []
        for image, caption in zip(images, captions):
            colour = "red" if image.getpixel((0, 0))[0] > 128 else "blue"
            out.append((0.0 if self.blind or colour in caption else -3.0, len(caption.split())))
        return out


def test_label_accuracy_by_caption_ranking_with_its_controls(url_list):
    samples = load(str(url_list))
    seeing, _ = label_accuracy(ColourScorer(), samples, "a photo of something {}", "Describe.")
    assert seeing["matched"] == 1.0 and seeing["chance"] == 0.5 and seeing["labels"] == ["blue", "red"]
    # shuffled: one cycle through the six images, so some images get one of the other colour
    assert seeing["shuffled"] < 1.0 and seeing["image_adds"]["vs_shuffled"] == 1.0 - seeing["shuffled"]
    pooled = (seeing["matched"] + seeing["shuffled"]) / 2
    assert seeing["stderr_vs_shuffled"] == pytest.approx((2 * pooled * (1 - pooled) / 6) ** 0.5)
    assert seeing["stderr_chance"] == pytest.approx((0.25 / 6) ** 0.5)
    blind, records = label_accuracy(ColourScorer(blind=True), samples, "a {}", "Describe.")
    assert blind["matched"] == blind["shuffled"]  # ties go to the first label, whatever the image
    assert len(records) == 6 and {"label", "matched", "shuffled"} <= set(records[0])
    with pytest.raises(ValueError, match="no label column"):
        label_accuracy(ColourScorer(), [s.__class__(s.key, s.image, s.caption) for s in samples], "a {}", "x")


class ImageOracle(OracleScorer):
    """OracleScorer for images in memory (PIL images do not hash: keyed by identity)."""

    def __init__(self, questions):
        self.truth = {(q.text, id(q.image_path)): q.answer for q in questions}

    def _answer(self, question, image):
        return self.truth.get((question, id(image)), "no idea")


def test_per_kind_accuracies_and_balanced_yes_no(url_list):
    questions = questions_of(load(str(url_list)))
    prior = QuestionPrior([(q.text, q.answer) for q in questions])
    summary, records = evaluate_vqa(ImageOracle(questions), questions, prior, ("yes", "no", "red", "blue"),
                                    batch_size=8, max_new_tokens=2)
    assert set(summary["per_kind"]) == {YES_NO, "colour"}
    for kind, part in summary["per_kind"].items():
        assert part["questions"] == 6 and part["greedy"]["matched"] == part["ranking"]["matched"] == 1.0
        assert part["image_adds"]["greedy_vs_prior"] == 1.0 - part["prior"]
    assert summary["yes_no_balanced"]["greedy"]["matched"] == 1.0
    # the prior answers "yes" to "is it red?" (3 yes, 3 no: the first seen wins the tie): right on
    # every yes-question, wrong on every no-question
    assert summary["yes_no_balanced"]["prior"] == 0.5
    assert {r["kind"] for r in records} == {YES_NO, "colour"}
    yes_no = [q for q in questions if q.kind == YES_NO]
    assert balanced_yes_no(["no"] * len(yes_no), yes_no) == 0.5
    assert balanced_yes_no(["yes"], [yes_no[0]]) is None  # no "no" question: undefined


def test_the_cli_on_a_url_list_with_a_blind_export(blind_export, url_list, tmp_path):
    from megatron_ext.evaluate.cli import main

    out = tmp_path / "eval"
    results = main([f"blind={blind_export}", "--data", str(url_list), "--label-template", "a {} square",
                    "--parts", "captions,labels,vqa", "--vqa", "ranking", "--out", str(out)])
    m = results["models"]["blind"]
    assert m["labels"]["matched"] == m["labels"]["shuffled"] and m["labels"]["images"] == 6
    assert m["captions"]["matched"] == pytest.approx(m["captions"]["shuffled"], abs=1e-6)
    assert m["captions"]["prompt"] == "Describe the image."  # training's default: the export records none
    assert set(m["vqa"]["per_kind"]) == {YES_NO, "colour"} and "optimistic" in results["prior_source"]
    parts = {json.loads(line)["part"] for line in (out / "predictions.jsonl").read_text().splitlines()}
    assert parts == {"vqa", "labels"}
    assert "Labels by caption ranking" in (out / "results.md").read_text()
    plain = tmp_path / "plain.csv"  # captions only
    plain.write_text(f"url,caption\n{url_list.parent / '0.png'},a\n{url_list.parent / '1.png'},b\n")
    with pytest.raises(ValueError, match="lacks question-answer pairs"):
        main([f"blind={blind_export}", "--data", str(plain), "--parts", "vqa", "--out", str(out)])


def test_a_native_export_loads_with_the_class_its_config_names(tmp_path):
    import transformers

    from megatron_ext.evaluate.scorer import _model_class

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlavaForConditionalGeneration"]}))
    assert _model_class(tmp_path, transformers.AutoModelForCausalLM) is transformers.LlavaForConditionalGeneration
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ParamVisionForCausalLM"],
                                                      "auto_map": {"AutoModelForCausalLM": "m.P"}}))
    assert _model_class(tmp_path, transformers.AutoModelForCausalLM) is transformers.AutoModelForCausalLM
