"""Run a function in N processes over gloo (the same Megatron code paths as NCCL on a cluster).

The processes are forked from a forkserver that has imported torch, Megatron-Core and the project's
training stack once (multiprocessing's `forkserver` start method with a preload): each process
then starts in a fraction of a second instead of importing them again (about ten core-seconds per
process under `spawn`), while keeping spawn's clean state (the server is a fresh interpreter, not a
copy of the test process). The server inherits the environment of the first call, so each process
takes the caller's current environment over on entry."""

from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.multiprocessing as mp

# what every multi-process test's workers import; a module missing here is imported per process
PRELOAD = ["torch", "megatron.core", "megatron_ext.parallel", "megatron_ext.core.specs",
           "megatron_ext.training.trainer", "transformers"]
mp.get_context("forkserver").set_forkserver_preload(PRELOAD)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world_size: int, port: int, outdir: str, kwargs: dict, environ: dict) -> None:
    # a deadlocked collective fails the test with every thread's stack instead of hanging CI
    import faulthandler
    faulthandler.dump_traceback_later(300, exit=True)
    os.environ.clear()
    os.environ.update(environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # two processes share the two cores
    result = fn(rank, **kwargs)
    torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    from megatron_ext.parallel import shutdown
    shutdown()


def run_distributed(fn, world_size: int = 2, **kwargs) -> list:
    """fn(rank, **kwargs) runs in each process (module-level, picklable); returns each rank's result."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning,ignore::DeprecationWarning")
    with tempfile.TemporaryDirectory() as outdir:
        mp.start_processes(_entry, args=(fn, world_size, _free_port(), outdir, kwargs, dict(os.environ)),
                           nprocs=world_size, start_method="forkserver")
        return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False)
                for r in range(world_size)]


def _each(rank: int, workers: dict) -> dict:
    return {name: fn(rank) for name, fn in workers.items()}


def run_distributed_each(workers: dict, world_size: int = 2) -> dict:
    """{name: fn(rank)} run one after the other in the same N processes (each fn sets up its own
    parallel groups): starting the processes costs more than a tiny model's work, so a module
    spawns once for all its layouts. -> {name: [each rank's result]}"""
    ranks = run_distributed(_each, world_size=world_size, workers=workers)
    return {name: [r[name] for r in ranks] for name in workers}
