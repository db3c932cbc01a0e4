"""GPU readiness, checked on any machine: the ROSE training hot path (a forward + backward of a ROSE
model) makes no call that makes the host wait for the device. Each such call is patched to count
itself; the count must be zero. On a GPU one of them per layer and micro-batch stalls the launch
queue (docs/ARCHITECTURE.md, rule 2: `inv_ex`, whose error flag nobody reads)."""

import os
import sys

import pytest
import torch

from megatron_ext.methods.rose.rotation import SolvedRotation
from rose_helpers import inputs, randomize_generator, tiny_rose

pytestmark = pytest.mark.usefixtures("megatron_single_process")

# (owner, name): the calls that read a device value on the host, or that check an error flag there
SYNCHRONISING = [(torch.Tensor, n) for n in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__",
                                             "__float__", "__index__", "nonzero")] \
    + [(torch.linalg, n) for n in ("solve", "inv", "lu_factor", "cholesky", "lu")] \
    + [(torch, n) for n in ("nonzero", "unique", "masked_select")] \
    + [(torch.cuda, "synchronize")]

# Calls on tensors that live in host memory on a GPU machine too, so they never wait for the device:
# Megatron's RNG tracker compares the CPU generator's state before and after each forked region.
HOST_ONLY_CALLERS = (os.path.join("megatron", "core", "tensor_parallel", "random.py"),)


@pytest.fixture
def counted(monkeypatch):
    """{name: calls} of the synchronising functions while `counted["on"]` is set."""
    calls = {"on": False}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            if calls["on"] and not sys._getframe(1).f_code.co_filename.endswith(HOST_ONLY_CALLERS):
                calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)
        return wrapper

    for owner, name in SYNCHRONISING:
        monkeypatch.setattr(owner, name, counting(f"{getattr(owner, '__name__', owner)}.{name}",
                                                  getattr(owner, name)))
    return calls


def _step(model, batch):
    model(**batch).mean().backward()


@pytest.mark.parametrize("seq", [16, 3], ids=["inverted-blocks", "solved-blocks"])
@pytest.mark.parametrize("frozen_llm", [True, False], ids=["s1-frozen-llm", "all-trainable"])
def test_rose_forward_backward_makes_no_synchronising_call(counted, frozen_llm, seq):
    """Both ways a rotation is applied: R^T built by inv_ex, and (blocks wider than the sequence)
    A = I + P solved with by solve_ex."""
    model = tiny_rose()
    randomize_generator(model)
    if frozen_llm:
        for p in model.language_model.parameters():
            p.requires_grad_(False)
    batch = inputs(seq=seq)
    kinds = {type(r) for r in model.conditioning_for(batch["visual_features"], seq).values()}
    assert kinds == ({torch.Tensor} if seq == 16 else {SolvedRotation})
    _step(model, batch)  # first call outside the count: lazily built state (rope caches, ...)
    model.zero_grad(set_to_none=True)
    counted["on"] = True
    _step(model, batch)
    counted["on"] = False
    found = {k: v for k, v in counted.items() if k != "on"}
    assert found == {}, f"synchronising calls on the ROSE hot path: {found}"
    assert model.vrmg.generators["2"].to_T["q"].weight.grad.abs().max() > 0  # it did run


def test_the_counter_sees_a_synchronising_call(counted):
    """The check can fail: the old path's torch.linalg.solve and a Python `if tensor` are counted."""
    counted["on"] = True
    A = torch.eye(3) + 0.1
    torch.linalg.solve(A, A)
    if (A > 0).all():
        pass
    counted["on"] = False
    assert counted.get("torch.linalg.solve") == 1 and counted.get("Tensor.__bool__") == 1, counted
