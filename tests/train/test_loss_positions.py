"""With the training step's loss_mask, the output layer runs only where the loss reads
(megatron_ext/core/loss_positions.py): the same per-token loss there, zero elsewhere, the same
gradients, and the full path where the mask keeps most positions. The step's forward is the one
training uses (training/step.py: forward_step_func)."""

import pytest
import torch

from llava_helpers import forward as llava_forward
from llava_helpers import IMAGE_TOKENS, llava_inputs, tiny_llava
from rose_helpers import inputs, randomize_generator, tiny_rose
from megatron_ext.training.step import forward_step_func

pytestmark = pytest.mark.usefixtures("megatron_single_process")


def _answer_mask(labels, keep=3, seed=1):
    """Loss on `keep` random positions per sample, as question-answer data puts it on the answer."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(labels.shape)
    for row in mask:
        row[torch.randperm(labels.shape[1], generator=g)[:keep]] = 1.0
    return mask


def _loss_and_grads(model, batch, mask, pass_mask: bool):
    model.zero_grad(set_to_none=True)
    kwargs = {"loss_mask": mask} if pass_mask else {}
    per_token = model(**batch, **kwargs)
    loss = (per_token * mask).sum() / mask.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return per_token.detach(), loss.detach(), grads


def _rose():
    model = tiny_rose()
    randomize_generator(model, scale=0.1)  # rotations away from I: the image matters
    return model


def test_only_the_masked_positions_are_computed_and_they_are_equal():
    model, batch = _rose(), inputs()
    mask = _answer_mask(batch["labels"])
    seen = []
    hook = model.language_model.output_layer.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[:2]))
    full, loss_full, grads_full = _loss_and_grads(model, batch, mask, pass_mask=False)
    picked, loss_picked, grads_picked = _loss_and_grads(model, batch, mask, pass_mask=True)
    hook.remove()
    assert seen == [(16, 2), (6, 1)]  # every position of 2 x 16, then the 6 the loss reads
    keep = mask.bool()
    torch.testing.assert_close(picked[keep], full[keep], rtol=1e-5, atol=1e-6)
    assert (picked[~keep] == 0).all() and (full[~keep] > 0).all()
    torch.testing.assert_close(loss_picked, loss_full, rtol=1e-5, atol=1e-6)
    assert grads_full and set(grads_picked) == set(grads_full)  # the generator's included
    for name, g in grads_full.items():
        torch.testing.assert_close(grads_picked[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_a_mask_that_keeps_most_positions_takes_the_full_path():
    model, batch = _rose(), inputs()
    mask = torch.ones(batch["labels"].shape)
    mask[:, :4] = 0
    full, _, _ = _loss_and_grads(model, batch, mask, pass_mask=False)
    same, _, _ = _loss_and_grads(model, batch, mask, pass_mask=True)
    assert torch.equal(same, full)  # the very same computation, positions the loss ignores included


def test_the_training_step_passes_its_mask_and_image_tokens_stay_aligned():
    """LLaVA's sequence holds the image's tokens before the text: the mask indexes that sequence."""
    model = tiny_llava()
    b = llava_inputs()
    mask = torch.zeros(b["labels"].shape)
    mask[:, [IMAGE_TOKENS + 2, -1]] = 1.0  # two answer tokens after the image's and the question's
    full = llava_forward(model, b)
    batch = dict(b, loss_mask=mask)
    per_token_of_step = []
    step = forward_step_func()

    def spy(*args, **kwargs):
        assert torch.equal(kwargs["loss_mask"], mask)
        out = model(*args, **kwargs)
        per_token_of_step.append(out)
        return out

    out, loss_func = step(iter([batch]), spy)
    loss, _ = loss_func(out)
    keep = mask.bool()
    torch.testing.assert_close(per_token_of_step[0][keep], full[keep], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, (full * mask).sum() / mask.sum(), rtol=1e-5, atol=1e-6)
