"""Forward-only loss of fixed micro-batches at any TP/PP layout (checks and validation)."""

from __future__ import annotations

from pathlib import Path

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_ext.methods.training import build_training_model, train_dtype
from megatron_ext.training import checkpoint
from megatron_ext.training.step import forward_step_func, reduce_loss


@torch.no_grad()
def eval_loss(model, batches: list) -> float:
    results = get_forward_backward_func()(
        forward_step_func=forward_step_func(), data_iterator=iter(batches), model=[model],
        num_microbatches=len(batches), seq_length=batches[0]["input_ids"].shape[1],
        micro_batch_size=batches[0]["input_ids"].shape[0], forward_only=True)
    return reduce_loss(results)


def checkpoint_loss(cfg, checkpoint_dir: Path, batches: list) -> float:
    """Build the model at cfg's layout (call init_parallel first), load a checkpoint's weights
    (written at any layout) and return the loss of `batches`."""
    _, model = build_training_model(cfg, train_dtype(cfg))
    info = checkpoint.load_weights(checkpoint.latest(checkpoint_dir), model)
    if info["kept_at_init"]:
        raise RuntimeError(f"{checkpoint_dir} lacks {info['kept_at_init']}")
    return eval_loss(model, batches)
