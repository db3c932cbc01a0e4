"""Slurm's preemption warning: SIGUSR1 (`--signal=USR1@<s>`, sent before preemption or the time
limit) asks the run to save at the end of the step and exit; the requeued job resumes from that
checkpoint. SIGTERM keeps its default (a hung collective must stay killable)."""

from __future__ import annotations

import logging
import signal

import torch.distributed as dist

from megatron_ext.device import host_tensor

log = logging.getLogger("train")


class Preemption:
    def __init__(self):
        self.flag = False
        signal.signal(signal.SIGUSR1, self._set)

    def _set(self, signum, _frame):
        log.warning("received signal %d: checkpointing after this step, then exiting", signum)
        self.flag = True

    def agreed(self) -> bool:
        """Whether any rank received the signal (every rank stops at the same step)."""
        t = host_tensor([1.0 if self.flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
