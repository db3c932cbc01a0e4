"""Kill and resume (CPU, DP=2: each rank's loader position, the distributed optimizer's shards, the
LR schedule, RNG): a run killed in the middle of a checkpoint save resumes from the previous,
undamaged checkpoint and reproduces the uninterrupted run's losses bit for bit."""

import pytest
import torch
import torch.multiprocessing as mp

from distributed import run_distributed
from train_helpers import TINY_S1

pytestmark = pytest.mark.multiproc
STEPS = ["train.steps=6", "checkpoint.every=2", "train.global_batch_size=8",
         "train.micro_batch_size=2", "log.wandb=false"]


def _full_then_killed(rank, root):
    """The uninterrupted run, then the same run killed midway through its step-4 save (two runs in
    one pair of processes: starting them costs more than training here)."""
    from megatron_ext.train import run
    from megatron_ext.training.config import load_config

    full = run(load_config(str(TINY_S1), STEPS + [f"log.run_dir={root / 'full'}"]))
    torch.save(full, root / f"full{rank}.pt")
    run(load_config(str(TINY_S1), STEPS + [f"log.run_dir={root / 'cut'}", "debug.die_in_save_at_step=4"]))


def _resume(rank, root):
    from megatron_ext.train import run
    from megatron_ext.training.config import load_config

    return run(load_config(str(TINY_S1), STEPS + [f"log.run_dir={root / 'cut'}"]))


def test_save_killed_midway_then_resume_gives_identical_losses(tmp_path):
    with pytest.raises(mp.ProcessExitedException):
        run_distributed(_full_then_killed, world_size=2, root=tmp_path)
    ckpts = tmp_path / "cut" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_000002"  # the pointer never moved
    assert (ckpts / "step_000004.tmp").is_dir() and not (ckpts / "step_000004").exists()

    resumed = run_distributed(_resume, world_size=2, root=tmp_path)
    full = torch.load(tmp_path / "full0.pt", weights_only=False)
    for r in resumed:
        assert r["start"] == 2 and r["step"] == 6
        assert r["losses"] == full["losses"][2:]  # bit-identical, not just close
    assert full["losses"][-1] < full["losses"][0]
    assert not (ckpts / "step_000004.tmp").exists()  # the next save cleared the debris
    assert (ckpts / "latest").read_text().strip() == "step_000006"
