"""LLaVA under tensor and pipeline parallelism, two processes over gloo: the same weights loaded
sharded give the TP=1/PP=1 logits, losses and gradients (projector, vision tower, LLM shards)."""

import pytest
import torch

import parallel_helpers

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def layouts():
    """TP=2 and PP=2, in the spawn the model tests share (parallel_helpers.py)."""
    return parallel_helpers.layouts(__name__)


MICROBATCHES = 3


def _reference():
    from llava_helpers import tiny_llava
    from lora_helpers import clone_state
    from megatron_ext.parallel import init_parallel

    init_parallel(1, 1)
    model = tiny_llava(train_vision=True)  # everything trains: every gradient is compared
    return model, clone_state(model)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _tp_worker(rank):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from llava_helpers import forward, llava_inputs, tiny_llava
    from layout_helpers import shard_for_rank
    from megatron_ext.parallel import init_parallel

    b = llava_inputs()
    ref_model, full = _reference()
    with torch.no_grad():
        ref_logits = forward(ref_model, b, labels=False)
    forward(ref_model, b).sum().backward()
    ref_grads = _grads(ref_model)

    init_parallel(2, 1)
    model = tiny_llava(train_vision=True)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    model.load_state_dict(shard_for_rank(full, model, tp_rank, 2))
    with torch.no_grad():
        logits = gather_from_tensor_model_parallel_region(forward(model, b, labels=False))
    forward(model, b).sum().backward()
    return dict(ref_logits=ref_logits, logits=logits, grads=_grads(model),
                ref_grads=shard_for_rank(ref_grads, model, tp_rank, 2))


def test_tensor_parallel_2_equals_1(layouts):
    for r in layouts["tp"]:
        torch.testing.assert_close(r["logits"], r["ref_logits"], atol=1e-5, rtol=1e-5)
        assert set(r["grads"]) == set(r["ref_grads"])
        for name, g in r["ref_grads"].items():  # projector and tower replicated, the LLM sharded
            torch.testing.assert_close(r["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
        assert any(n.startswith("lm.projector.") for n in r["grads"])
        assert any(n.startswith("vision.model.encoder.") for n in r["grads"])


def _pp_worker(rank):
    from megatron.core import parallel_state

    from llava_helpers import forward, llava_inputs, pp1_names, tiny_llava
    from lora_helpers import run_schedule, stage_state_dict
    from megatron_ext.parallel import init_parallel

    batches = [llava_inputs(seed=i) for i in range(MICROBATCHES)]
    ref_model, full = _reference()
    ref_losses = [d["loss"] for d in run_schedule(ref_model, batches, forward)]
    ref_grads = _grads(ref_model)

    init_parallel(1, 2)
    model = tiny_llava(train_vision=True)
    model.load_state_dict(stage_state_dict(full, model), strict=True)
    losses = [d["loss"] for d in run_schedule(model, batches, forward)]
    return dict(stage=parallel_state.get_pipeline_model_parallel_rank(), losses=losses,
                ref_losses=ref_losses, grads=pp1_names(_grads(model), model), ref_grads=ref_grads,
                has_tower=model.vision is not None, has_projector=model.lm.projector is not None)


def test_pipeline_parallel_2_equals_1_through_1f1b(layouts):
    first, last = sorted(layouts["pp"], key=lambda r: r["stage"])
    assert first["has_tower"] and first["has_projector"] and not last["has_tower"] and not last["has_projector"]
    assert first["losses"] == []
    torch.testing.assert_close(torch.stack(last["losses"]), torch.stack(last["ref_losses"]),
                               atol=1e-5, rtol=1e-5)
    # every parameter, wherever it lives, gets the PP=1 gradient (the tower's through stage 1's loss)
    assert set(first["grads"]) | set(last["grads"]) == set(first["ref_grads"])
    assert any(n.startswith("vision.") for n in first["grads"])
    for r in (first, last):
        for name, g in r["grads"].items():
            torch.testing.assert_close(g, r["ref_grads"][name], atol=1e-5, rtol=1e-4, msg=name)
