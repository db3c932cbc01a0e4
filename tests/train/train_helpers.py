"""Tiny training configs and workers shared by the training tests."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_S1 = ROOT / "configs" / "train" / "s1-rose-tiny.yaml"


def qwen_tokenizer(path):
    """The real Qwen2.5 tokenizer, built offline (recaption.tiny) and saved to path: (path, tokenizer)."""
    from recaption.tiny import build_tokenizer

    tok = build_tokenizer()
    tok.save_pretrained(path)
    return path, tok


def tiny_cfg(run_dir, *overrides, config=TINY_S1):
    from megatron_ext.training.config import load_config

    base = [f"log.run_dir={run_dir}", "log.wandb=false", "log.every=1000"]
    return load_config(str(config), base + list(overrides))


def train_worker(rank, configs):
    """Run each (config path, overrides) in turn in this process; per run: losses, step, and
    per parameter (requires_grad, changed) of this rank."""
    from megatron.core import parallel_state as ps

    from megatron_ext.train import run
    from megatron_ext.training.config import load_config

    os.environ.setdefault("WANDB_MODE", "offline")
    results = []
    for path, overrides in configs:
        r = run(load_config(str(path), overrides), keep_model=True)
        r.pop("model")
        r.update(tp=ps.get_tensor_model_parallel_rank(), pp=ps.get_pipeline_model_parallel_rank(),
                 dp=ps.get_data_parallel_rank())
        results.append(r)
    return results


def checkpoint_loss(cfg, checkpoint_dir, batches: list) -> float:
    """Build the model at cfg's layout (call init_parallel first), load a checkpoint's weights
    (written at any layout) and return the loss of `batches`."""
    from megatron_ext.core.weights import load_weights
    from megatron_ext.training.checkpoint import latest
    from megatron_ext.training.model import build_training_model, train_dtype
    from megatron_ext.training.step import eval_loss

    _, model = build_training_model(cfg, train_dtype(cfg))
    info = load_weights(latest(checkpoint_dir), model)
    if info["kept_at_init"]:
        raise RuntimeError(f"{checkpoint_dir} lacks {info['kept_at_init']}")
    return eval_loss(model, batches)
