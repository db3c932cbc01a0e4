"""ROSE under tensor and pipeline parallelism, two processes over gloo.

Each worker first builds the TP=1/PP=1 reference (both ranks identically), then re-initialises
Megatron's groups at TP=2 or PP=2, loads the *same* weights sharded from the reference state dict
(seeds give different weights at different TP sizes) and compares."""

import pytest
import torch

import parallel_helpers

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def layouts():
    """TP=2 and PP=2, in the spawn the model tests share (parallel_helpers.py)."""
    return parallel_helpers.layouts(__name__)


def _reference(rank):
    from megatron_ext.parallel import init_parallel
    from rose_helpers import randomize_generator, tiny_rose

    init_parallel(1, 1)
    model = tiny_rose()
    randomize_generator(model, scale=0.1)
    return model, {k: v.clone() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}


def _vrmg_grads(model):
    return {n: p.grad.clone() for n, p in model.vrmg.named_parameters()}


def _tp_worker(rank):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from layout_helpers import shard_for_rank
    from megatron_ext.parallel import init_parallel
    from rose_helpers import inputs, tiny_rose

    batch = inputs(batch=2, seq=12)
    ref_model, full = _reference(rank)
    ref_logits = ref_model(batch["input_ids"], batch["position_ids"], None, batch["visual_features"])
    ref_model(**batch).sum().backward()
    ref = dict(logits=ref_logits.detach(), grads=_vrmg_grads(ref_model),
               qkv_grad=ref_model.language_model.decoder.layers[1].self_attention.linear_qkv.parts.q.weight.grad.clone())
    with torch.no_grad():
        ref["rotations"] = ref_model.rotations_for(batch["visual_features"])

    init_parallel(2, 1)
    model = tiny_rose()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    model.load_state_dict(shard_for_rank(full, model, tp_rank, 2))
    logits = model(batch["input_ids"], batch["position_ids"], None, batch["visual_features"])
    logits = gather_from_tensor_model_parallel_region(logits)  # vocab shards -> full vocab
    model(**batch).sum().backward()
    q_grad = model.language_model.decoder.layers[1].self_attention.linear_qkv.parts.q.weight.grad.clone()
    with torch.no_grad():  # what this rank's generator emits and factorises
        emitted = {k: t.shape for k, t in model.vrmg(batch["visual_features"], select=model._select).items()}
        rotations = model.rotations_for(batch["visual_features"])
    grads = _vrmg_grads(model)
    # the output layer on the loss's positions only (core/loss_positions.py) under TP's vocabulary shards
    mask = torch.zeros(batch["labels"].shape)
    mask[:, -3:] = 1.0
    picked = {}
    for pass_mask in (False, True):
        model.zero_grad(set_to_none=True)
        per_token = model(**batch, **({"loss_mask": mask} if pass_mask else {}))
        (per_token * mask).sum().backward()
        picked[pass_mask] = dict(per_token=per_token.detach(), grads=_vrmg_grads(model))
    return dict(ref=ref, logits=logits.detach(), grads=grads, tp_rank=tp_rank,
                q_grad=q_grad, emitted=emitted, rotations=rotations, mask=mask, loss_positions=picked)


def test_tensor_parallel_2_equals_1(layouts):
    results = layouts["tp"]
    for r in results:
        ref = r["ref"]
        torch.testing.assert_close(r["logits"], ref["logits"], atol=1e-5, rtol=1e-5)
        # the replicated generator gets the full gradient on every TP rank: the column-parallel
        # rotations through the input all-reduce, the row-parallel (o, down) ones through the
        # all-gather of their per-rank blocks
        for name, g in ref["grads"].items():
            torch.testing.assert_close(r["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
        shard = ref["qkv_grad"].chunk(2, dim=0)[r["tp_rank"]]
        torch.testing.assert_close(r["q_grad"], shard, atol=1e-5, rtol=1e-4)
        # row-parallel o and down: this rank's generator emits, and it factorises, only its own
        # blocks (half of them), equal to the TP=1 model's; column-parallel parts: all blocks
        for (layer, p), Rt in r["rotations"].items():
            full = ref["rotations"][(layer, p)]
            blocks = full.shape[-3]
            if p in ("o", "down"):
                assert r["emitted"][(layer, p)][-2] == blocks // 2 and Rt.shape[-3] == blocks // 2
                full = full.chunk(2, dim=-3)[r["tp_rank"]]
            else:
                assert r["emitted"][(layer, p)][-2] == blocks
            torch.testing.assert_close(Rt, full, atol=1e-6, rtol=0)
    assert any(g.abs().max() > 0 for g in results[0]["ref"]["grads"].values())


MICROBATCHES = 4


def _run_schedule(model, batches):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(data_iterator, model):
        b = next(data_iterator)  # every stage reads the visual features of the micro-batch
        out = model(b["input_ids"], b["position_ids"], None, b["visual_features"], labels=b["labels"])
        return out, lambda o: (o.mean(), {"loss": o.mean().detach()})

    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(batches), model=[model],
        num_microbatches=len(batches), seq_length=batches[0]["input_ids"].shape[1],
        micro_batch_size=batches[0]["input_ids"].shape[0], forward_only=False)


def _pp_worker(rank):
    from megatron.core import parallel_state

    from megatron_ext.parallel import init_parallel
    from megatron_ext.core.specs import stage_layers
    from rose_helpers import inputs, tiny_rose

    batches = [inputs(batch=2, seq=12, seed=i) for i in range(MICROBATCHES)]
    ref_model, full = _reference(rank)
    ref_losses = [d["loss"] for d in _run_schedule(ref_model, batches)]
    ref_grads = _vrmg_grads(ref_model)

    init_parallel(1, 2)
    model = tiny_rose()
    layers = list(stage_layers(model.config))
    offset = layers[0] - 1
    local = {}
    for key, value in full.items():  # global layer index -> this stage's local index
        if ".decoder.layers." in key:
            head, rest = key.split(".decoder.layers.")
            index, tail = rest.split(".", 1)
            if int(index) + 1 not in layers:
                continue
            key = f"{head}.decoder.layers.{int(index) - offset}.{tail}"
        if key in model.state_dict():
            local[key] = value
    model.load_state_dict(local, strict=True)
    losses = [d["loss"] for d in _run_schedule(model, batches)]
    return dict(stage=parallel_state.get_pipeline_model_parallel_rank(), layers=layers,
                equipped=model.equipped, ref_losses=ref_losses, losses=losses,
                ref_grads=ref_grads, grads=_vrmg_grads(model))


def test_loss_positions_only_equal_every_position_at_tensor_parallel_2(layouts):
    for r in layouts["tp"]:
        full, picked, keep = r["loss_positions"][False], r["loss_positions"][True], r["mask"].bool()
        torch.testing.assert_close(picked["per_token"][keep], full["per_token"][keep], rtol=1e-5, atol=1e-6)
        assert (picked["per_token"][~keep] == 0).all() and (full["per_token"][~keep] > 0).all()
        for name, g in full["grads"].items():
            torch.testing.assert_close(picked["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_pipeline_parallel_2_equals_1_through_1f1b(layouts):
    results = sorted(layouts["pp"], key=lambda r: r["stage"])
    first, last = results
    assert first["layers"] == [1, 2] and last["layers"] == [3, 4]
    assert first["equipped"] == [2] and last["equipped"] == [4]  # one generator per stage
    assert first["losses"] == []  # only the last stage computes the loss
    torch.testing.assert_close(torch.stack(last["losses"]), torch.stack(last["ref_losses"]),
                               atol=1e-5, rtol=1e-5)
    for r in results:  # each stage's generator gets the same gradient as in the PP=1 model
        assert set(r["grads"]) == {n for n in r["ref_grads"] if n.startswith(f"generators.{r['equipped'][0]}.")}
        for name, g in r["grads"].items():
            torch.testing.assert_close(g, r["ref_grads"][name], atol=1e-5, rtol=1e-4, msg=name)
