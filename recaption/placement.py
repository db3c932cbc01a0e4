"""Where the captioning actors run: GPUs, Python environment, restarts, vLLM's placement group.

The Ray Data actor pool of pipeline/recaption.py takes these arguments. One model per actor:
- transformers: one GPU per actor when the cluster has GPUs, else one CPU;
- vLLM at tensor_parallel_size 1: one GPU per actor (no GPU with a CPU vLLM, whose KV cache is
  VLLM_CPU_KVCACHE_SPACE GiB instead);
- vLLM at tensor_parallel_size N > 1: the actor itself holds no GPU; each actor gets a placement
  group of N one-GPU bundles that captures its children, and vLLM's Ray executor starts its N
  workers in it (as ray.data.llm's vLLM stage does). An actor holding num_gpus=N would leave vLLM
  to reserve N more and wait forever.
- the actors run in vLLM's own environment (runtime_env py_executable), since vLLM pins a torch
  and transformers of its own;
- a dead engine exits its actor (recaption.base.restart_actor); Ray restarts it at most
  recaption.vllm.max_engine_restarts times, then the stage fails with the engine's error.
"""
from __future__ import annotations

import sys
from typing import Optional


def actor_gpus(rc, backend: str, cluster_gpus: float) -> float:
    if rc.num_gpus_per_actor is not None:
        return float(rc.num_gpus_per_actor)
    if cluster_gpus <= 0:
        return 0.0
    if backend == "vllm" and rc.vllm.tensor_parallel_size > 1:
        return 0.0  # the placement group holds them
    return 1.0


def _placement_group_fn(tp: int):
    def ray_remote_args_fn() -> dict:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = placement_group([{"GPU": 1, "CPU": 1}] * tp, strategy="STRICT_PACK")
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            pg, placement_group_capture_child_tasks=True)}

    return ray_remote_args_fn


def actor_options(rc, backend: str, cluster_gpus: float, python: Optional[str]) -> dict:
    """Keyword arguments for Dataset.map_batches(CaptionActor, ...) (besides fn and compute)."""
    gpus = actor_gpus(rc, backend, cluster_gpus)
    opts = dict(num_gpus=gpus, num_cpus=0 if gpus else 1)
    if backend != "vllm":
        return opts
    env = {}
    if python and python != sys.executable:
        env["py_executable"] = python
    if cluster_gpus <= 0:
        env["env_vars"] = {"VLLM_CPU_KVCACHE_SPACE": str(rc.vllm.cpu_kvcache_space_gib)}
    if env:
        opts["runtime_env"] = env
    opts["max_restarts"] = rc.vllm.max_engine_restarts
    if rc.vllm.tensor_parallel_size > 1 and cluster_gpus > 0 and rc.num_gpus_per_actor is None:
        opts["ray_remote_args_fn"] = _placement_group_fn(rc.vllm.tensor_parallel_size)
    return opts
