"""VLoRA under tensor and pipeline parallelism, two processes over gloo (pattern of
test_rose_parallel.py: build the TP=1/PP=1 reference in the same workers, re-initialise the groups,
load the same weights sharded, compare)."""

import pytest
import torch

import parallel_helpers

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def layouts():
    """TP=2 and PP=2, in the spawn the model tests share (parallel_helpers.py)."""
    return parallel_helpers.layouts(__name__)


def _reference():
    from lora_helpers import clone_state, randomize, tiny_vlora
    from megatron_ext.parallel import init_parallel

    init_parallel(1, 1)
    model = tiny_vlora()
    randomize(model, scale=0.2)
    return model, clone_state(model)


def _trainable_grads(model):
    from lora_helpers import grads
    return grads((n, p) for n, p in model.named_parameters() if p.requires_grad)


def _tp_worker(rank):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from lora_helpers import tiny_vlora, vlora_inputs
    from layout_helpers import shard_for_rank
    from megatron_ext.parallel import init_parallel

    b = vlora_inputs(batch=2, seq=12)
    ref_model, full = _reference()
    with torch.no_grad():
        ref_logits = ref_model(b["input_ids"], b["position_ids"], None, b["visual_features"])
    image = b["visual_features"][:1]
    with torch.no_grad():
        ref_one_image = ref_model(b["input_ids"], b["position_ids"], None, image.expand(2, -1, -1))
    ref_model(**b).sum().backward()
    ref_grads = _trainable_grads(ref_model)

    init_parallel(2, 1)
    model = tiny_vlora()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    model.load_state_dict(shard_for_rank(full, model, tp_rank, 2))
    with torch.no_grad():
        logits = gather_from_tensor_model_parallel_region(
            model(b["input_ids"], b["position_ids"], None, b["visual_features"]))
    with torch.no_grad():  # per-image merge at TP=2: W_v's rows/W_s's columns of this rank
        model.merge_image(image)
        merged = gather_from_tensor_model_parallel_region(model(b["input_ids"], b["position_ids"], None))
        model.unmerge_image()
    model(**b).sum().backward()
    # sharded W_s gradients are compared against the same shard of the reference's
    local_ref = shard_for_rank(ref_grads, model, tp_rank, 2)
    # distributed checkpoints: W_s of column-parallel q is sharded like q, row-parallel o's is whole
    sharded = model.sharded_state_dict(metadata={"dp_cp_group": parallel_state.get_data_parallel_group()})
    shapes = {k.rsplit("lora_B.", 1)[1]: (tuple(v.local_shape), tuple(v.global_shape), v.global_offset)
              for k, v in sharded.items() if "layers.1." in k and ".lora_B." in k}
    return dict(ref_logits=ref_logits, logits=logits, grads=_trainable_grads(model), ref_grads=local_ref,
                shapes=shapes, tp_rank=tp_rank, merged=merged, ref_one_image=ref_one_image)


def test_tensor_parallel_2_equals_1(layouts):
    for r in layouts["tp"]:
        torch.testing.assert_close(r["logits"], r["ref_logits"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r["merged"], r["ref_one_image"], atol=1e-5, rtol=1e-5)
        assert set(r["grads"]) == set(r["ref_grads"])
        # the replicated generator gets complete gradients on every rank: column-parallel
        # branches through the all-reduce of x W_v's gradient, row-parallel ones through the
        # all-gather of W_v's row shards
        for name, g in r["ref_grads"].items():
            torch.testing.assert_close(r["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
        assert all(g.abs().max() > 0 for g in r["grads"].values())
        # (Megatron stacks layers in front: global (layers, out, rank), this is layer index 1)
        assert r["shapes"]["q"] == ((32, 8), (4, 64, 8), (1, 32 * r["tp_rank"], 0))
        assert r["shapes"]["o"] == ((64, 8), (4, 64, 8), (1, 0, 0))


MICROBATCHES = 3


def _forward(model, b):
    return model(b["input_ids"], b["position_ids"], None, b["visual_features"], labels=b["labels"])


def _pp_worker(rank):
    from megatron.core import parallel_state

    from lora_helpers import run_schedule, stage_state_dict, tiny_vlora, vlora_inputs
    from megatron_ext.parallel import init_parallel
    from megatron_ext.core.specs import stage_layers

    batches = [vlora_inputs(batch=2, seq=12, seed=i) for i in range(MICROBATCHES)]
    ref_model, full = _reference()
    ref_losses = [d["loss"] for d in run_schedule(ref_model, batches, _forward)]
    ref_grads = _trainable_grads(ref_model)

    init_parallel(1, 2)
    model = tiny_vlora()
    model.load_state_dict(stage_state_dict(full, model), strict=True)
    losses = [d["loss"] for d in run_schedule(model, batches, _forward)]
    model.finalize_generator_grads()
    return dict(stage=parallel_state.get_pipeline_model_parallel_rank(), layers=list(stage_layers(model.config)),
                equipped=model.equipped, losses=losses, ref_losses=ref_losses,
                gen=_trainable_grads(model.generator), ref_gen=_trainable_grads(ref_model.generator))


def test_pipeline_parallel_2_equals_1_through_1f1b(layouts):
    first, last = sorted(layouts["pp"], key=lambda r: r["stage"])
    assert first["layers"] == [1, 2] and last["layers"] == [3, 4]
    assert first["equipped"] == [2] and last["equipped"] == [4]
    assert first["losses"] == []
    torch.testing.assert_close(torch.stack(last["losses"]), torch.stack(last["ref_losses"]),
                               atol=1e-5, rtol=1e-5)
    # each stage's generator replica holds, after finalize_generator_grads, the PP=1 gradient
    for r in (first, last):
        assert set(r["gen"]) == set(r["ref_gen"])
        for name, g in r["ref_gen"].items():
            torch.testing.assert_close(r["gen"][name], g, atol=1e-5, rtol=1e-4, msg=name)
