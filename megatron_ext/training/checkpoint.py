"""Sharded checkpoints (megatron.core.dist_checkpointing) that a killed save cannot damage.

Layout under <run_dir>/checkpoints:
    step_000010/        a complete dist_checkpointing directory (model, optimizer, scheduler,
                        step, loader position per DP rank, RNG per rank: CPU, CUDA
                        and Megatron's tensor-parallel tracker)
    latest              text file naming the newest complete checkpoint
A save writes into step_XXXXXX.tmp, renames it into place once every rank has finished, then
replaces `latest` atomically (write + os.replace). A save killed at any point leaves the previous
checkpoint and pointer untouched; leftover *.tmp directories are removed by the next save.
Model tensors are sharded by TP/PP, so a checkpoint written at one layout loads at another
(weights; the optimizer state is only resumed at the same layout).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

from megatron_ext.core.weights import model_state
from megatron_ext.training.optim import synced_parameters

log = logging.getLogger(__name__)
# The distributed optimizer's state: each DP rank writes its own shard of the flat buffers
# (`dp_reshardable`, Megatron-LM's default) through Megatron's fully parallel save strategy, which
# spreads the replicated tensors' writes over the DP ranks. No gather onto DP rank 0, no rank
# holding the whole state; it resumes at the same TP/PP, resharded along DP (the weights load at
# any layout: load_weights, train.init_from). A checkpoint records its format (content metadata);
# one in the gathered format (`fully_reshardable`, gloo; this project's CPU format until
# 2026-12-08, whose gather took 20 of the 24 seconds of a 135M model's save on 2 cores) still loads.
OPTIM_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}
GATHERED_OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable",
                           "distrib_optim_fully_reshardable_mem_efficient": True}


def optimizer_format() -> dict:
    return dict(OPTIM_METADATA)


def _save_strategy(fmt: dict):
    """Megatron's fully parallel save for the per-rank format; the gathered one is on DP rank 0 only."""
    if fmt != OPTIM_METADATA:
        return None
    return FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(),
                                            ps.get_data_parallel_group(with_context_parallel=True))


def step_dir_name(step: int) -> str:
    """The one name of a step's checkpoint directory (the main job compares with it too)."""
    return f"step_{step:06d}"


def latest(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under `root` (a checkpoints dir or a run dir), or None."""
    root = Path(root)
    for base in (root, root / "checkpoints"):
        pointer = base / "latest"
        if pointer.is_file():
            path = base / pointer.read_text().strip()
            if not path.is_dir():
                raise FileNotFoundError(f"{pointer} names {path}, which does not exist")
            return path
    if (root / "metadata.json").is_file():  # a checkpoint directory itself
        return root
    return None


def _ranks():
    return (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
            ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())


def _state(model, optimizer, scheduler, loader, step: int, is_loading: bool, extra: dict,
           optim_format: dict | None = None) -> dict:
    tp, pp, dp_rank, dp = _ranks()
    rank, world = dist.get_rank(), dist.get_world_size()
    model_sd = model_state(model)
    state = {"model": model_sd, "step": step, "extra": extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                                          metadata=optim_format or OPTIM_METADATA)
        state["scheduler"] = scheduler.state_dict()
        # one loader position per DP rank (replicated over TP/PP), one RNG state per process
        state["loader"] = ShardedObject("loader", None if is_loading else loader.state_dict(),
                                        (dp,), (dp_rank,), replica_id=(0, tp, pp))
        state["rng"] = ShardedObject("rng", None if is_loading else rng_state(),
                                     (world,), (rank,), replica_id=0)
    return state


def _results_in_process() -> None:
    """Megatron's file writer hands its write results over a multiprocessing Manager's queue: a
    process spawned at the first save that imports the whole training program again (4-8 s of CPU
    and a process per rank and run). Only an asynchronous save, finished by
    another process, needs that; this module's saves are synchronous, and the results come back
    to the saving process itself, where a plain queue carries them."""
    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def save(root: Path, step: int, model, optimizer, scheduler, loader, extra: dict,
         keep: int = 2, die_midway: bool = False) -> Path:
    _results_in_process()
    root = Path(root)
    final, tmp = root / step_dir_name(step), root / f"{step_dir_name(step)}.tmp"
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    fmt = optimizer_format()
    with synced_parameters(optimizer):  # the step's weights, also with the all-gather overlapped
        dist_checkpointing.save(_state(model, optimizer, scheduler, loader, step, False, extra, fmt), str(tmp),
                                sharded_strategy=_save_strategy(fmt), content_metadata=fmt)
    if die_midway:  # fault injection (tests): the data is written, nothing is renamed yet
        log.error("debug.die_in_save_at_step=%d: exiting in the middle of the save", step)
        raise SystemExit(17)  # (not os._exit: that strands the checkpoint writer's children)
    dist.barrier()
    if dist.get_rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = root / "latest.tmp"
        pointer_tmp.write_text(final.name + "\n")
        os.replace(pointer_tmp, root / "latest")
        done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def rng_state() -> dict:
    """This process's generators: the CPU one, the current CUDA device's, and Megatron's tracker
    (the tensor-parallel dropout/init streams, forked from the CUDA generator)."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()}}


def set_rng_state(state) -> None:
    """Restore rng_state(); a bare tensor (checkpoints written before the CUDA state was saved) is
    the CPU generator alone."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None:
        if not torch.cuda.is_available():
            raise RuntimeError("this checkpoint holds a CUDA RNG state; resume it on a CUDA machine "
                               "(or load its weights with train.init_from)")
        torch.cuda.set_rng_state(state["cuda"])
    if state["tracker"]:
        get_cuda_rng_tracker().set_states({k: v.clone() for k, v in state["tracker"].items()})


def _materialise_optimizer_state(optimizer) -> None:
    """torch's Adam creates its state (and `step`) lazily; the distributed optimizer's state_dict
    needs it to exist before a load fills it in. Megatron's own dummy step does that (zero grads;
    the loaded state and weights replace whatever it touched)."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if hasattr(opt, "_init_optimizer_states_with_dummy_values") and not opt.optimizer.state:
            opt._init_optimizer_states_with_dummy_values()


def load(path: Path, model, optimizer, scheduler, loader) -> dict:
    """Everything back (same TP/PP/DP layout): returns {"step", "extra"}."""
    _materialise_optimizer_state(optimizer)
    # older checkpoints: no content metadata, the gathered format
    fmt = dist_checkpointing.load_content_metadata(str(path)) or GATHERED_OPTIM_METADATA
    state = dist_checkpointing.load(_state(model, optimizer, scheduler, loader, 0, True, {}, fmt), str(path))
    model.load_state_dict(state["model"])
    with torch.no_grad():  # the per-rank format copies into fp32 main params that view the weights
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    return {"step": int(state["step"]), "extra": state["extra"]}
