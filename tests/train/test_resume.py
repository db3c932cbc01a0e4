"""A run killed between checkpoints and resumed gives the losses of an uninterrupted run, exactly
(CPU, DP=2: each rank's loader position, the distributed optimizer's shards, the LR schedule)."""

import pytest
import torch.multiprocessing as mp

from distributed import run_distributed
from train_helpers import TINY_S1, train_worker

pytestmark = pytest.mark.multiproc
STEPS = ["train.steps=6", "checkpoint.every=3", "train.global_batch_size=8", "train.micro_batch_size=2"]


def test_kill_and_resume_gives_identical_losses(tmp_path):
    full = run_distributed(train_worker, world_size=2,
                           configs=[(TINY_S1, STEPS + [f"log.run_dir={tmp_path / 'full'}", "log.wandb=false"])])
    cut = STEPS + [f"log.run_dir={tmp_path / 'cut'}", "log.wandb=false"]
    with pytest.raises(mp.ProcessExitedException):  # killed after step 4; the last save is step 3
        run_distributed(train_worker, world_size=2, configs=[(TINY_S1, cut + ["debug.exit_after_step=4"])])
    resumed = run_distributed(train_worker, world_size=2, configs=[(TINY_S1, cut)])
    ref, res = full[0][0], resumed[0][0]
    assert res["start"] == 3 and res["step"] == 6
    assert res["losses"] == ref["losses"][3:]  # bit-identical, not just close
    assert ref["losses"][-1] < ref["losses"][0]
