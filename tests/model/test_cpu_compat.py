"""The CPU compatibility layer is inert on a CUDA machine and routes Megatron's CUDA assumptions
to the CPU otherwise."""

import subprocess
import sys

import torch

from megatron_ext.compat import cpu as cpu_compat


def test_inactive_when_cuda_is_present():
    code = ("import torch; torch.cuda.is_available = lambda: True\n"
            "orig = torch.cuda.current_device\n"
            "from megatron_ext.compat import cpu\n"
            "assert cpu.install() is False\n"
            "assert torch.cuda.current_device is orig\n"
            "from megatron.core.transformer import utils\n"
            "import inspect; assert 'cuda' in inspect.getsource(utils.get_default_causal_mask)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))


def test_active_on_cpu_routes_devices_rng_and_masks():
    assert cpu_compat.install() is True
    assert torch.cuda.current_device() == torch.device("cpu")
    from megatron.core.fusions import fused_softmax
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core.transformer import utils

    mask = utils.get_default_causal_mask(4)
    assert mask.device.type == "cpu" and fused_softmax.get_default_causal_mask is utils.get_default_causal_mask
    assert torch.equal(mask, torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1))
    # Megatron's RNG tracker save/restore round-trips through the CPU generator
    state = mrandom._get_cuda_rng_state()
    a = torch.rand(3)
    mrandom._set_cuda_rng_state(state)
    assert torch.equal(torch.rand(3), a)
