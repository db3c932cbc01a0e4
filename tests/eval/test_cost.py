"""The evaluation's inference cost on real tiny exports: torch's FLOP counter runs through a
generator's forward (VLoRA's once failed inside its module hooks), and a method that puts the image
in the sequence (VoRA) takes a larger image with as many more placeholders as patches."""

import json

import pytest
import torch

from megatron_ext.evaluate.cost import sample_cost
from megatron_ext.evaluate.vqa import heldout_questions


@pytest.fixture(scope="module")
def question():
    return heldout_questions(1)[0]


def _counted_gflops(model, **inputs) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**inputs)
    return counter.get_total_flops() / 1e9


def test_vlora_cost_counts_the_image_path_on_top_of_the_text(blind_vlora_export, question):
    from megatron_ext.evaluate.scorer import ExportScorer

    scorer = ExportScorer(blind_vlora_export)
    cost = sample_cost(scorer, question.text, question.image_path, question.answer)
    assert cost["visual_tokens"] == 4 and not cost["visual_in_sequence"]  # 32 px / 16-px patches
    batch = scorer._inputs([scorer.prompt(question.text) + question.answer + scorer.end_of_turn],
                           [question.image_path])
    text_only = _counted_gflops(scorer.model, input_ids=batch["input_ids"])
    assert cost["tokens"] == batch["input_ids"].shape[1]
    assert cost["counted_gflops"] > text_only > 0  # the encoder and the generator's GEMMs on top


@pytest.fixture(scope="module")
def vora_export(tmp_path_factory):
    from transformers import SiglipImageProcessorPil

    from megatron_ext.export.folder import export_model
    from megatron_ext.methods import build_model, resolve_preset
    from recaption.tiny import build_tokenizer

    preset = json.loads(json.dumps(resolve_preset("tiny-vora")))
    preset["llm"]["vocab_size"] = 151680
    torch.manual_seed(0)
    model = build_model(preset, method="vora", backend="local")
    out = tmp_path_factory.mktemp("eval") / "vora-step0"
    export_model(model, preset["llm"], out, build_tokenizer(),
                 SiglipImageProcessorPil(size={"height": 16, "width": 16}))
    return out, preset["vora"]["patch_size"]


def test_vora_takes_a_larger_image_with_more_placeholders(vora_export, megatron_single_process, question):
    from megatron_ext.evaluate.scorer import ExportScorer

    path, patch = vora_export
    scorer = ExportScorer(path)
    small = sample_cost(scorer, question.text, question.image_path, question.answer)
    scorer.processor.image_processor.size = {"height": 32, "width": 32}  # twice the trained side
    large = sample_cost(scorer, question.text, question.image_path, question.answer)
    assert small["visual_in_sequence"] and small["visual_tokens"] == (16 // patch) ** 2
    assert large["visual_tokens"] == 4 * small["visual_tokens"]
    assert large["tokens"] - small["tokens"] == large["visual_tokens"] - small["visual_tokens"]
    assert large["llm_gflops"] > small["llm_gflops"] and large["counted_gflops"] > small["counted_gflops"]
