"""Kill and resume (CPU, DP=2: each rank's loader position, the distributed optimizer's shards, the
LR schedule, RNG): a run killed in the middle of a checkpoint save resumes from the previous,
undamaged checkpoint and reproduces the uninterrupted run's losses bit for bit. In both formats of
the optimizer state a checkpoint can hold, which it records: the per-rank one every run writes
(each DP rank its own distributed-optimizer shard, Megatron's fully parallel save strategy), and
the one gathered onto DP rank 0 that earlier CPU runs wrote.

A killed save ends its processes, so three spawns of two processes run it all: the uninterrupted
run, then the run killed in the per-rank format; its resume, then a run killed in the gathered
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


def _gathered_format():
    from megatron_ext.training import checkpoint

    # the optimizer state gathered onto DP rank 0 (checkpoints written before the per-rank format)
    checkpoint.optimizer_format = lambda: dict(checkpoint.GATHERED_OPTIM_METADATA)


def _full_then_killed(rank, root):
    torch.save(_run(root, "full"), root / f"full{rank}.pt")
    _run(root, "cut", KILLED)


def _resume_then_killed_in_gathered_format(rank, root):
    torch.save(_run(root, "cut"), root / f"resumed{rank}.pt")
    _gathered_format()
    _run(root, "cut-gathered", KILLED)


def _resume_gathered_format(rank, root):
    from megatron.core import dist_checkpointing

    meta = dist_checkpointing.load_content_metadata(str(root / "cut-gathered" / "checkpoints" / "step_000002"))
    r = _run(root, "cut-gathered")  # the load reads the format the checkpoint records
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
        run_distributed(_resume_then_killed_in_gathered_format, world_size=2, root=root)
    killed["cut-gathered"] = _killed_state(root / "cut-gathered" / "checkpoints")
    gathered = run_distributed(_resume_gathered_format, world_size=2, root=root)
    return dict(root=root, killed=killed, gathered=gathered,
                full=torch.load(root / "full0.pt", weights_only=False),
                resumed=[torch.load(root / f"resumed{r}.pt", weights_only=False) for r in (0, 1)])


def test_save_killed_midway_then_resume_gives_identical_losses(runs):
    for name in ("cut", "cut-gathered"):  # the pointer never moved; the step-4 save is debris
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
    from megatron.core import dist_checkpointing
    assert dist_checkpointing.load_content_metadata(str(ckpts / "step_000004")) == {
        "distrib_optim_sharding_type": "dp_reshardable"}  # each DP rank wrote its own shard


def test_a_checkpoint_in_the_gathered_optimizer_format_resumes_bit_for_bit(runs):
    for r in runs["gathered"]:
        assert r["meta"] == {"distrib_optim_sharding_type": "fully_reshardable",
                             "distrib_optim_fully_reshardable_mem_efficient": True}
        assert r["start"] == 2 and r["losses"] == runs["full"]["losses"][2:]
