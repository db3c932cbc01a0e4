"""The model tests' TP=2 and PP=2 layouts in one spawn of two processes per test session.

Each of MODULES defines _tp_worker and _pp_worker (tiny models, about a core-second of work each);
starting two processes with Megatron's imports costs about twenty core-seconds, so the modules
share one spawn instead of one each. A module imported here is the one pytest imported (by its
basename, tests/model being on sys.path), so the spawned processes find its workers the same way."""

import functools
import importlib

from distributed import run_distributed_each

MODULES = ("test_llava_parallel", "test_rose_parallel", "test_vision", "test_vlora_parallel",
           "test_vora_parallel")


@functools.cache
def _all_layouts() -> dict:
    workers = {}
    for name in MODULES:
        module = importlib.import_module(name)
        workers[f"{name}.tp"], workers[f"{name}.pp"] = module._tp_worker, module._pp_worker
    return run_distributed_each(workers)


def layouts(module: str) -> dict:
    """{"tp": [each rank's result], "pp": [...]} of `module`'s workers."""
    results = _all_layouts()
    return {layout: results[f"{module}.{layout}"] for layout in ("tp", "pp")}
