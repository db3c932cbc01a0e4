"""The install path of a GPU node, checked with stand-ins: the torch build chosen from the driver,
and a CPU torch on a GPU node refused instead of training on the CPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMI = ("+-----------------------------------------------------------------------------+\n"
       "| NVIDIA-SMI 570.86.15    Driver Version: 570.86.15    CUDA Version: {v}     |\n")


def _tag(tmp_path, version):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncat <<'X'\n" + SMI.format(v=version) + "X\n")
    smi.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(ROOT / "scripts" / "torch_cuda_tag.sh")], env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("driver_cuda, tag", [("13.0", "cu128"), ("12.8", "cu128"), ("12.9", "cu128"),
                                              ("12.6", "cu126"), ("12.7", "cu126")])
def test_torch_build_follows_the_driver(tmp_path, driver_cuda, tag):
    out = _tag(tmp_path, driver_cuda)
    assert (out.returncode, out.stdout.strip()) == (0, tag)


def test_too_old_a_driver_is_refused_with_the_reason(tmp_path):
    out = _tag(tmp_path, "12.2")
    assert out.returncode == 1 and out.stdout == ""
    assert "supports CUDA 12.2; torch 2.13.0 needs CUDA >= 12.6: update the NVIDIA driver" in out.stderr


def test_a_gpu_node_without_cuda_torch_refuses_to_train(monkeypatch):
    import torch

    from megatron_ext import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("PARAMVISION_ALLOW_CPU", raising=False)
    monkeypatch.setattr(device, "nvidia_gpu_present", lambda: False)
    device.require_usable_gpu()  # a CPU machine: fine
    monkeypatch.setattr(device, "nvidia_gpu_present", lambda: True)
    with pytest.raises(RuntimeError, match="has an NVIDIA GPU but torch .* cannot use it"):
        device.require_usable_gpu()
    monkeypatch.setenv("PARAMVISION_ALLOW_CPU", "1")
    device.require_usable_gpu()
