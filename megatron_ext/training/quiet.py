"""Start-up noise of a training process, said once: Megatron-Core's warnings that Transformer
Engine or Apex are missing (one per module that falls back, in every process) become one line
naming the backend that runs, and its per-parameter list of each gradient bucket goes to debug
level (the trainable groups are summarised by train.py instead).

Imported before Megatron-Core: its fallback warnings fire at import time."""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings

# the messages' beginnings; PYTHONWARNINGS carries them to processes this one starts
FALLBACK_WARNINGS = ("Transformer Engine and Apex are not installed", "Apex is not installed")
BUCKET_LOGGER = "megatron.core.distributed.param_and_grad_buffer"


def filter_fallback_warnings() -> None:
    for message in FALLBACK_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    inherited = [f"ignore:{m}:UserWarning" for m in FALLBACK_WARNINGS]
    current = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(([current] if current else []) + inherited)


def fallback_summary() -> str:
    """One line: which of Transformer Engine and Apex are absent, so what runs instead."""
    missing = [name for name, module in (("Transformer Engine", "transformer_engine"), ("Apex", "apex"))
               if importlib.util.find_spec(module) is None]
    if not missing:
        return "kernels: Transformer Engine and Apex installed"
    return (f"kernels: {' and '.join(missing)} not installed: Megatron-Core runs its PyTorch fallbacks "
            f"(norms, optimizer, gradient clipping); their warnings are filtered")


class _BucketListToDebug(logging.Filter):
    """Megatron logs every parameter name of each gradient bucket at INFO: shown at DEBUG only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and "Params for bucket" in record.getMessage():
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def demote_bucket_lists() -> None:
    logging.getLogger(BUCKET_LOGGER).addFilter(_BucketListToDebug())


filter_fallback_warnings()  # at import: before anything imports Megatron-Core
