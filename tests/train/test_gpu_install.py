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


def _check(tmp_path, driver, torch_says):
    """torch_cuda_tag.sh --check against a stand-in driver and a stand-in Python whose torch says
    `torch_says` (version, CUDA, usable)."""
    _tag(tmp_path, driver)  # writes the nvidia-smi stand-in
    py = tmp_path / "python"
    py.write_text(f"#!/bin/sh\necho '{torch_says}'\n")
    py.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(ROOT / "scripts" / "torch_cuda_tag.sh"), "--check", str(py)], env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("driver, torch_says, expected", [
    ("12.8", "2.13.0+cpu None 0", "torch 2.13.0+cpu is a CPU build: set TORCH_CUDA_INDEX to a PyTorch "
                                  "wheel index for cu128"),
    ("13.0", "2.13.0 13.0 1", "is built for CUDA 13.0, but Transformer Engine's core (core-cu12) and DALI"),
    ("12.6", "2.13.0 12.8 0", "cannot use the GPU (the driver runs CUDA 12.6): set TORCH_CUDA_INDEX to a "
                              "PyTorch wheel index for cu126"),
    ("12.2", "2.13.0 12.8 0", "the driver supports CUDA 12.2; torch 2.13.0 needs CUDA >= 12.6: update the "
                              "NVIDIA driver"),
])
def test_a_torch_the_driver_cannot_run_is_one_line_with_the_remedy(tmp_path, driver, torch_says, expected):
    out = _check(tmp_path, driver, torch_says)
    assert out.returncode == 1 and expected in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_pypis_cuda_12_torch_that_sees_the_gpu_passes(tmp_path):
    out = _check(tmp_path, "12.4", "2.13.0 12.8 1")  # CUDA minor-version compatibility: it runs
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_setup_scripts_build_te_offline_and_check_what_they_install():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "download.pytorch.org" not in setup  # PyPI only, unless TORCH_CUDA_INDEX says otherwise
    assert "NVTE_PYTORCH_FORCE_BUILD=TRUE" in setup and "MAX_JOBS=" in setup and "ninja" in setup
    assert 'import transformer_engine.pytorch' in setup
    assert "torch.cuda.is_available()" in (ROOT / "scripts" / "setup_vllm.sh").read_text()
    for script in ("setup.sh", "setup_vllm.sh", "torch_cuda_tag.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)]).returncode == 0
