"""Process-group set-up shared by training, tests and benchmarks."""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from megatron_ext.compat import cpu as cpu_compat

log = logging.getLogger(__name__)


def backend_name() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_parallel(tensor_parallel: int = 1, pipeline_parallel: int = 1, seed: int = 1234) -> None:
    """Initialise torch.distributed from the torchrun environment and Megatron's model-parallel groups.

    Falls back to a single process when no torchrun variables are set.
    """
    from megatron.core import parallel_state, tensor_parallel as mtp

    on_cpu = cpu_compat.install()
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            # one process, not launched by torchrun: a private port, whatever MASTER_PORT a parent
            # process (a test run, a Slurm job) left in the environment
            os.environ["MASTER_ADDR"] = "127.0.0.1"
            os.environ["MASTER_PORT"] = str(_free_port())
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        if not on_cpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend_name(), rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=10))
    world = dist.get_world_size()
    if world % (tensor_parallel * pipeline_parallel):
        raise ValueError(f"world size {world} is not divisible by TP={tensor_parallel} x PP={pipeline_parallel}")
    parallel_state.destroy_model_parallel()
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


def shutdown() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
