"""Process-group set-up shared by training, tests and benchmarks."""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from megatron_ext.compat import cpu as cpu_compat
from megatron_ext.device import require_usable_gpu

log = logging.getLogger(__name__)


def backend_name() -> str:
    """On CUDA, NCCL for CUDA tensors and gloo for CPU ones (object collectives, host-side flags
    and counters): NCCL alone rejects CPU tensors."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_parallel(tensor_parallel: int = 1, pipeline_parallel: int = 1, seed: int = 1234) -> None:
    """Initialise torch.distributed from the torchrun environment and Megatron's model-parallel groups.

    Without torchrun's variables, a single process on a free loopback port (the environment is
    left untouched, so child processes inherit no stale MASTER_PORT).
    """
    from megatron.core import parallel_state, tensor_parallel as mtp

    require_usable_gpu()
    on_cpu = cpu_compat.install()
    if not dist.is_initialized():
        if "WORLD_SIZE" in os.environ:  # launched by torchrun (or a test's process group)
            init, rank, world = "env://", int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            if not on_cpu:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        else:  # one process: a private port, whatever MASTER_PORT the environment carries
            init, rank, world = f"tcp://127.0.0.1:{_free_port()}", 0, 1
        dist.init_process_group(backend_name(), init_method=init, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=10))
    world = dist.get_world_size()
    if world % (tensor_parallel * pipeline_parallel):
        raise ValueError(f"world size {world} is not divisible by TP={tensor_parallel} x PP={pipeline_parallel}")
    destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel,
                                             pipeline_model_parallel_size=pipeline_parallel)
    mtp.model_parallel_cuda_manual_seed(seed)
    if dist.get_rank() == 0:
        log.info("parallel: world=%d TP=%d PP=%d backend=%s", world, tensor_parallel,
                 pipeline_parallel, backend_name())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def destroy_model_parallel() -> None:
    """Megatron's destroy_model_parallel forgets its groups, but torch.distributed keeps them,
    and each gloo group keeps a thread that polls every 10 ms: a process that initialises again
    (the in-process CLIs, tests, a notebook) piled up 190 such threads, a fifth of a core while
    idle. Destroy every group but the world's."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        world = dist.GroupMember.WORLD
        for group in list(dist.distributed_c10d._world.pg_map):
            if group is not world:
                dist.destroy_process_group(group)


def shutdown() -> None:
    destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
