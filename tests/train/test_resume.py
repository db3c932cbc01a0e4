"""Kill and resume (CPU, DP=2: each rank's loader position, the distributed optimizer's shards, the
LR schedule, RNG): a run killed in the middle of a checkpoint save resumes from the previous,
undamaged checkpoint and reproduces the uninterrupted run's losses bit for bit. In both formats of
the optimizer state: the canonical one a CPU run writes, and the one a CUDA run writes (each DP rank
its own distributed-optimizer shard, Megatron's fully parallel save strategy), which the checkpoint
records.

A killed save ends its processes, so three spawns of two processes run it all: the uninterrupted
run, then the run killed in the canonical format; its resume, then the run killed in the CUDA
format; that one's resume."""

import json

import pytest
import torch
import torch.multiprocessing as mp

from distributed import run_distributed
from train_helpers import TINY_S1

pytestmark = pytest.mark.multiproc
# a checkpoint at step 2, the kill in step 4's save, two steps after the resume
STEPS = ["train.steps=4", "checkpoint.every=2", "optim.warmup_steps=1", "train.global_batch_size=8",
         "train.micro_batch_size=2", "log.wandb=false"]
KILLED = "debug.die_in_save_at_step=4"


def _run(root, name, *extra):
    from megatron_ext.train import run
    from megatron_ext.training.config import load_config

    return run(load_config(str(TINY_S1), STEPS + [f"log.run_dir={root / name}", *extra]))


def _parallel_format():
    from megatron_ext.training import checkpoint

    checkpoint._parallel_save = lambda: True  # what torch.cuda.is_available() chooses on a GPU node


def _full_then_killed(rank, root):
    torch.save(_run(root, "full"), root / f"full{rank}.pt")
    _run(root, "cut", KILLED)


def _resume_then_killed_in_parallel_format(rank, root):
    torch.save(_run(root, "cut"), root / f"resumed{rank}.pt")
    _parallel_format()
    _run(root, "cut-parallel", KILLED)


def _resume_parallel_format(rank, root):
    from megatron.core import dist_checkpointing

    _parallel_format()
    meta = dist_checkpointing.load_content_metadata(str(root / "cut-parallel" / "checkpoints" / "step_000002"))
    r = _run(root, "cut-parallel")
    return dict(losses=r["losses"], start=r["start"], meta=meta)


def _killed_state(ckpts):
    """What a save killed midway left: the pointer, and the half-written step-4 directory."""
    return dict(latest=(ckpts / "latest").read_text().strip(), tmp=(ckpts / "step_000004.tmp").is_dir(),
                final=(ckpts / "step_000004").exists())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    killed = {}
    with pytest.raises(mp.ProcessExitedException):
        run_distributed(_full_then_killed, world_size=2, root=root)
    killed["cut"] = _killed_state(root / "cut" / "checkpoints")
    with pytest.raises(mp.ProcessExitedException):
        run_distributed(_resume_then_killed_in_parallel_format, world_size=2, root=root)
    killed["cut-parallel"] = _killed_state(root / "cut-parallel" / "checkpoints")
    parallel = run_distributed(_resume_parallel_format, world_size=2, root=root)
    return dict(root=root, killed=killed, parallel=parallel,
                full=torch.load(root / "full0.pt", weights_only=False),
                resumed=[torch.load(root / f"resumed{r}.pt", weights_only=False) for r in (0, 1)])


def test_save_killed_midway_then_resume_gives_identical_losses(runs):
    for name in ("cut", "cut-parallel"):  # the pointer never moved; the step-4 save is debris
        assert runs["killed"][name] == dict(latest="step_000002", tmp=True, final=False), name
    full = runs["full"]
    for r in runs["resumed"]:
        assert r["start"] == 2 and r["step"] == 4
        assert r["losses"] == full["losses"][2:]  # bit-identical, not just close
    assert full["losses"][-1] < full["losses"][0]
    # the killed run logged steps 3 and 4; its resume trained them again: each step once, the resume's
    lines = [json.loads(x) for x in (runs["root"] / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert [m["loss"] for m in lines[2:]] == pytest.approx(full["losses"][2:])
    ckpts = runs["root"] / "cut" / "checkpoints"
    assert not (ckpts / "step_000004.tmp").exists()  # the next save cleared the debris
    assert (ckpts / "latest").read_text().strip() == "step_000004"


def test_parallel_optimizer_format_resumes_bit_for_bit(runs):
    for r in runs["parallel"]:
        assert r["meta"] == {"distrib_optim_sharding_type": "dp_reshardable"}
        assert r["start"] == 2 and r["losses"] == runs["full"]["losses"][2:]
