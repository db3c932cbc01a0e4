"""VoRA under tensor and pipeline parallelism, two processes over gloo: the same weights loaded
sharded give the TP=1/PP=1 logits, losses and gradients (LoRA A/B shards, embedding, aux heads)."""

import pytest
import torch

import parallel_helpers

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def layouts():
    """TP=2 and PP=2, in the spawn the model tests share (parallel_helpers.py)."""
    return parallel_helpers.layouts(__name__)


MICROBATCHES = 3


def _batch(seed):
    from lora_helpers import ToyTeacher, vora_inputs

    b = vora_inputs(seed=seed)
    b["teacher_features"] = ToyTeacher()(b["images"])
    return b


def _forward(model, b):
    return model(b["input_ids"], b["position_ids"], None, images=b["images"], image_ids=b["image_ids"],
                 teacher_features=b["teacher_features"], labels=b["labels"])


def _reference():
    from lora_helpers import clone_state, randomize, tiny_vora
    from megatron_ext.parallel import init_parallel

    init_parallel(1, 1)
    model = tiny_vora()
    randomize(model, scale=0.1)
    return model, clone_state(model)


def _trainable_grads(model):
    from lora_helpers import grads
    return grads((n, p) for n, p in model.named_parameters() if p.requires_grad)


def _tp_worker(rank):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from lora_helpers import tiny_vora
    from layout_helpers import shard_for_rank
    from megatron_ext.parallel import init_parallel

    b = _batch(0)
    ref_model, full = _reference()
    with torch.no_grad():
        ref_logits = ref_model(b["input_ids"], b["position_ids"], None, images=b["images"],
                               image_ids=b["image_ids"])
    _forward(ref_model, b).sum().backward()
    ref_grads = _trainable_grads(ref_model)
    ref_distill = {k: v.detach() for k, v in ref_model.distill_losses.items()}

    init_parallel(2, 1)
    model = tiny_vora()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    model.load_state_dict(shard_for_rank(full, model, tp_rank, 2))
    with torch.no_grad():
        logits = gather_from_tensor_model_parallel_region(model(
            b["input_ids"], b["position_ids"], None, images=b["images"], image_ids=b["image_ids"]))
    _forward(model, b).sum().backward()
    distill = {k: v.detach() for k, v in model.distill_losses.items()}
    with torch.no_grad():  # each rank folds its own shards: B_local A (column), B A_local (row)
        model.merge()
        merged = gather_from_tensor_model_parallel_region(model(
            b["input_ids"], b["position_ids"], None, images=b["images"], image_ids=b["image_ids"]))
    return dict(ref_logits=ref_logits, logits=logits, merged=merged,
                ref_grads=shard_for_rank(ref_grads, model, tp_rank, 2),
                grads=_trainable_grads(model), ref_distill=ref_distill,
                distill=distill)


def test_tensor_parallel_2_equals_1(layouts):
    for r in layouts["tp"]:
        torch.testing.assert_close(r["logits"], r["ref_logits"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r["merged"], r["ref_logits"], atol=1e-5, rtol=1e-5)
        assert r["distill"].keys() == r["ref_distill"].keys() == {1, 2, 3}
        for k in r["distill"]:
            torch.testing.assert_close(r["distill"][k], r["ref_distill"][k], atol=1e-6, rtol=1e-5)
        assert set(r["grads"]) == set(r["ref_grads"])
        for name, g in r["ref_grads"].items():  # column: A whole, B sharded; row: A sharded, B whole
            torch.testing.assert_close(r["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
        assert any(".lora_A_weight." in n for n in r["grads"]) and any("vision_embedding" in n for n in r["grads"])


def _pp_worker(rank):
    from megatron.core import parallel_state

    from lora_helpers import run_schedule, stage_state_dict, tiny_vora
    from megatron_ext.parallel import init_parallel

    batches = [_batch(i) for i in range(MICROBATCHES)]
    ref_model, full = _reference()
    ref_model.distill_loss_scale = 1 / MICROBATCHES  # the schedule averages the LM loss likewise
    ref_losses = [d["loss"] for d in run_schedule(ref_model, batches, _forward)]
    ref_grads = _trainable_grads(ref_model)

    init_parallel(1, 2)
    model = tiny_vora()
    model.distill_loss_scale = 1 / MICROBATCHES
    model.load_state_dict(stage_state_dict(full, model), strict=True)
    losses = [d["loss"] for d in run_schedule(model, batches, _forward)]
    # this stage's parameters under their PP=1 names
    from megatron_ext.core.specs import stage_layers
    offset = list(stage_layers(model.config))[0] - 1
    grads = {}
    for n, g in _trainable_grads(model).items():
        if ".decoder.layers." in n:
            head, rest = n.split(".decoder.layers.")
            index, tail = rest.split(".", 1)
            n = f"{head}.decoder.layers.{int(index) + offset}.{tail}"
        grads[n] = g
    return dict(stage=parallel_state.get_pipeline_model_parallel_rank(), losses=losses,
                ref_losses=ref_losses, grads=grads, ref_grads=ref_grads,
                distilled=sorted(model.distill_losses))


def test_pipeline_parallel_2_equals_1_through_1f1b(layouts):
    first, last = sorted(layouts["pp"], key=lambda r: r["stage"])
    assert first["distilled"] == [1, 2] and last["distilled"] == [3]  # distillation on both stages
    assert first["losses"] == []
    torch.testing.assert_close(torch.stack(last["losses"]), torch.stack(last["ref_losses"]),
                               atol=1e-5, rtol=1e-5)
    # every trainable parameter, wherever it lives, gets the PP=1 gradient of LM + distillation
    assert set(first["grads"]) | set(last["grads"]) == set(first["ref_grads"])
    assert any("vision_embedding" in n for n in first["grads"])
    for r in (first, last):
        for name, g in r["grads"].items():
            torch.testing.assert_close(g, r["ref_grads"][name], atol=1e-5, rtol=1e-4, msg=name)
