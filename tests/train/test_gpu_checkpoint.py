"""The checkpoint format a CUDA run writes (each DP rank its own distributed-optimizer shard,
Megatron's fully parallel save strategy), exercised over gloo at DP=2: a resumed run reproduces
the uninterrupted run's losses bit for bit, and the checkpoint records its format."""

import pytest
import torch
import torch.multiprocessing as mp

from distributed import run_distributed
from train_helpers import TINY_S1

pytestmark = pytest.mark.multiproc
STEPS = ["train.steps=6", "checkpoint.every=2", "train.global_batch_size=8", "train.micro_batch_size=2",
         "log.wandb=false"]


def _parallel_format():
    from megatron_ext.training import checkpoint

    checkpoint._parallel_save = lambda: True  # what torch.cuda.is_available() chooses on a GPU node


def _full_then_killed(rank, root):
    from megatron_ext.train import run
    from megatron_ext.training.config import load_config

    _parallel_format()
    full = run(load_config(str(TINY_S1), STEPS + [f"log.run_dir={root / 'full'}"]))
    torch.save(full["losses"], root / f"full{rank}.pt")
    run(load_config(str(TINY_S1), STEPS + [f"log.run_dir={root / 'cut'}", "debug.die_in_save_at_step=4"]))


def _resume(rank, root):
    from megatron.core import dist_checkpointing

    from megatron_ext.train import run
    from megatron_ext.training.config import load_config

    _parallel_format()
    meta = dist_checkpointing.load_content_metadata(str(root / "cut" / "checkpoints" / "step_000002"))
    r = run(load_config(str(TINY_S1), STEPS + [f"log.run_dir={root / 'cut'}"]))
    return dict(losses=r["losses"], start=r["start"], meta=meta)


def test_parallel_optimizer_format_resumes_bit_for_bit(tmp_path):
    with pytest.raises(mp.ProcessExitedException):
        run_distributed(_full_then_killed, world_size=2, root=tmp_path)
    full = torch.load(tmp_path / "full0.pt")
    for r in run_distributed(_resume, world_size=2, root=tmp_path):
        assert r["meta"] == {"distrib_optim_sharding_type": "dp_reshardable"}
        assert r["start"] == 2 and r["losses"] == full[2:]
