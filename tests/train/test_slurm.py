"""The Slurm launchers' dry run prints the exact srun/torchrun commands: rendezvous on the first
node, one task per node, GPUs per node, stage chaining (s2 from s1's checkpoint, s3 from s2's),
container hook, per-job logs, overrides passed through."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def dry_run(stage, *args, **env):
    inherited = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    e = dict(inherited, DRY_RUN="1", SLURM_JOB_NODELIST="gpu-a,gpu-b,gpu-c", SLURM_NNODES="3",
             SLURM_JOB_ID="4242", SLURM_JOB_NAME=f"train-{stage}", GPUS_PER_NODE="8",
             RUN_ROOT="/ckpt", PATH="/usr/bin:/bin", **env)
    e.pop("SLURM_SUBMIT_DIR", None)
    out = subprocess.run(["bash", str(ROOT / "launch" / "slurm" / f"{stage}.sh"), *args], env=e,
                         capture_output=True, text=True, check=True).stdout
    srun = next(l for l in out.splitlines() if l.startswith("srun "))
    return out, shlex.split(srun)


@pytest.mark.parametrize("stage,prev", [("s1", None), ("s2", "s1"), ("s3", "s2")])
def test_dry_run_prints_the_exact_commands(stage, prev):
    out, cmd = dry_run(stage, "train.steps=10")
    assert cmd[:4] == ["srun", "--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert f"--output=logs/train-{stage}-4242-node%n.log" in cmd
    torchrun = cmd[cmd.index("torchrun"):]
    assert cmd[cmd.index("torchrun") - 1].endswith("launch/slurm/node.sh")
    assert torchrun[:6] == ["torchrun", "--nnodes=3", "--nproc-per-node=8", "--rdzv-backend=c10d",
                            "--rdzv-endpoint=gpu-a:29742", "--rdzv-id=4242"]
    assert torchrun[6:10] == ["-m", "megatron_ext.train", "--config", f"configs/train/rose/{stage}.yaml"]
    assert f"log.run_dir=/ckpt/rose/{stage}" in torchrun
    init = [a for a in torchrun if a.startswith("train.init_from=")]
    assert init == ([f"train.init_from=/ckpt/rose/{prev}"] if prev else [])
    assert torchrun[-1] == "train.steps=10"
    assert "scontrol requeue 4242" in out
    assert (ROOT / f"configs/train/rose/{stage}.yaml").is_file()


def test_method_container_and_env_hook():
    out, cmd = dry_run("s2", METHOD="vlora", CONTAINER_IMAGE="nvcr.io/nvidia/pytorch:25.01-py3",
                       CONTAINER_MOUNTS="/data:/data", ENV_HOOK="/opt/env.sh")
    assert "--container-image=nvcr.io/nvidia/pytorch:25.01-py3" in cmd
    assert "--container-mounts=/data:/data" in cmd
    assert "configs/train/vlora/s2.yaml" in cmd and "train.init_from=/ckpt/vlora/s1" in cmd
    assert "ENV_HOOK=/opt/env.sh" in out


def test_every_referenced_config_parses():
    from megatron_ext.training.config import load_config

    for path in sorted((ROOT / "configs" / "train").rglob("*.yaml")):
        load_config(str(path))
