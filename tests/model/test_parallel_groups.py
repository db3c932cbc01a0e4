"""Initialising model parallelism again in one process (the in-process CLIs, the tests, a
notebook) keeps one set of process groups: each gloo group keeps a thread that polls every 10 ms,
and the groups Megatron forgot on re-initialisation used to pile up (190 threads in a test worker)."""

import os

import torch.distributed as dist

from megatron_ext import parallel
from megatron_ext.core import feature_exchange


def _groups() -> int:
    return len(dist.distributed_c10d._world.pg_map)


def _gloo_poll_threads() -> int:
    return sum(open(f"/proc/self/task/{t}/comm").read().strip() == "gloo_tcp_loop"
               for t in os.listdir("/proc/self/task"))


def test_initialising_again_leaves_no_group_or_polling_thread_behind():
    parallel.init_parallel(1, 1)
    channels = feature_exchange.channels()
    groups, threads = _groups(), _gloo_poll_threads()
    assert groups > 10  # Megatron's groups and the two feature channels
    for _ in range(3):
        parallel.init_parallel(1, 1)
        again = feature_exchange.channels()
        # the channels are made anew on live groups, not the destroyed ones
        assert again is not channels and again.forward in dist.distributed_c10d._world.pg_map
        channels = again
        assert _groups() == groups
    # one re-initialisation without the clean-up adds a thread per group
    assert _gloo_poll_threads() < threads + 3, (threads, _gloo_poll_threads())
