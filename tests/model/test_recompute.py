"""Full activation recompute reruns each decoder layer's forward inside the backward, after the
model's forward has returned: the per-image conditioning (ROSE's T, VLoRA's W_v, VoRA's
distillation targets) must still reach the layers there. With Megatron's recompute (uniform, one
layer per unit) every method gives the losses and gradients it gives without, including the
generator's with the LLM frozen (S1), and VoRA's distillation loss counts once."""

import pytest
import torch

RECOMPUTE = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)


def _pair(build, prepare):
    """(plain, recomputing) models of one method with the same weights, in training mode."""
    plain = build(None)
    prepare(plain)
    again = build(RECOMPUTE)
    again.load_state_dict({k: v for k, v in plain.state_dict().items() if torch.is_tensor(v)}, strict=False)
    for a, b in zip(plain.parameters(), again.parameters()):
        b.requires_grad_(a.requires_grad)
    return plain.train(), again.train()


def _loss_and_grads(model, batch, forward):
    model.zero_grad(set_to_none=True)
    loss = forward(model, batch).float().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(plain, again, batch, forward):
    loss_a, grads_a = _loss_and_grads(plain, batch, forward)
    loss_b, grads_b = _loss_and_grads(again, batch, forward)
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a and grads_b.keys() == grads_a.keys()
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, atol=1e-6, rtol=1e-5, msg=name)
    return grads_a


def test_rose_generator_trains_under_full_recompute_with_the_llm_frozen(megatron_single_process):
    from megatron_ext.core.injected import train_only
    from rose_helpers import PRESET, inputs, randomize_generator
    from megatron_ext.methods.rose import build_rose

    def build(overrides):
        torch.manual_seed(0)
        return build_rose(PRESET, backend="local", config_overrides=overrides)

    def prepare(model):
        randomize_generator(model, scale=0.1)
        train_only(model, model.generator_parameters())  # S1: only the VRMG trains

    plain, again = _pair(build, prepare)
    assert again.config.recompute_granularity == "full"
    grads = _assert_same(plain, again, inputs(), lambda m, b: m(**b))
    assert all(".to_T." in n or "vrmg" in n or "generator" in n for n in grads)
    assert max(g.abs().max() for g in grads.values()) > 0


def test_vlora_under_full_recompute_equals_without(megatron_single_process):
    from lora_helpers import randomize, tiny_vlora, vlora_inputs

    plain, again = _pair(lambda o: tiny_vlora(config_overrides=o), lambda m: randomize(m, scale=0.1))
    _assert_same(plain, again, vlora_inputs(), lambda m, b: m(**b))


def test_vora_distillation_counts_once_under_full_recompute(megatron_single_process):
    from lora_helpers import ToyTeacher, randomize, tiny_vora, vora_inputs

    batch = vora_inputs()
    batch["teacher_features"] = ToyTeacher()(batch["images"])

    def forward(model, b):
        return model(b["input_ids"], b["position_ids"], None, images=b["images"], image_ids=b["image_ids"],
                     teacher_features=b["teacher_features"], labels=b["labels"])

    plain, again = _pair(lambda o: tiny_vora(config_overrides=o), lambda m: randomize(m, scale=0.1))
    grads = _assert_same(plain, again, batch, forward)
    assert any(".aux_head." in n for n in grads)  # the distillation gradient is in the comparison
    # the logged loss: once per distilled block, equal to the plain model's
    assert sorted(again.distill_losses) == sorted(plain.distill_losses)
    torch.testing.assert_close(again.distill_loss().detach(), plain.distill_loss().detach())


def test_conditioning_outside_its_forward_is_refused():
    from megatron_ext.core.context import ConditioningContext

    ctx = ConditioningContext()
    with pytest.raises(RuntimeError, match="needs per-image conditioning but none is set"):
        ctx.get(3, "q")
