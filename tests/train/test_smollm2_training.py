"""SmolLM2-135M-Instruct trains through the train CLI from its packaged weights (model.llm_weights,
read by the Llama converter; no hub access): ROSE S1 at TP=1 for a few steps. At step 0 the loss is
transformers' loss of the same model on the same batch (the VRMG starts at R = I), and it falls.
Slow: the weights' conversion (~1 min, once per session) and a 30-layer model on 2 cores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "train" / "smollm2" / "rose-s1.yaml"


def _overrides(smollm2_dir, run_dir):
    # precomputed features (49 tokens x 1280, EfficientNet-Lite0's shape) in place of the shards: the
    # batch is then a pure function of the seed and can be rebuilt here for transformers
    return [f"model.llm_weights={smollm2_dir}", "model.vision_weights=", "data.kind=synthetic",
            "data.pairs=8", "data.seq_length=16", "data.visual_tokens=49", "train.steps=6",
            "train.micro_batch_size=4", "train.global_batch_size=8", "optim.lr=1e-3", "optim.warmup_steps=1",
            "optim.min_lr=1e-3", f"log.run_dir={run_dir}", "log.wandb=false", "log.every=1",
            "checkpoint.every=1000"]


def _hf_loss(smollm2_dir, overrides) -> float:
    """transformers' loss on the run's first global batch: the mean over micro-batches of the
    masked per-token cross-entropy (megatron_ext/training/step.py)."""
    from transformers import AutoModelForCausalLM

    from megatron_ext.data.loader import build_loader
    from megatron_ext.methods import get_method, resolve_preset
    from megatron_ext.training.config import load_config, num_microbatches

    cfg = load_config(str(CONFIG), overrides)
    loader = build_loader(cfg, resolve_preset(cfg.model.preset), 0, 1, get_method(cfg.model.method))
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    losses = []
    with torch.no_grad():
        for _ in range(num_microbatches(cfg, 1)):
            b = loader.next_microbatch()
            logits = hf(b["input_ids"]).logits
            per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b["labels"], reduction="none")
            losses.append((per_token * b["loss_mask"]).sum() / b["loss_mask"].sum())
    return torch.stack(losses).mean().item()


def test_rose_s1_from_the_packaged_weights_starts_at_the_llm_and_learns(smollm2_dir, tmp_path):
    run_dir = tmp_path / "run"
    overrides = _overrides(smollm2_dir, run_dir)
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "megatron_ext.train", "--config", str(CONFIG), *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6
    reference = _hf_loss(smollm2_dir, overrides)
    assert abs(losses[0] - reference) < 1e-4 * reference, (losses[0], reference)  # identity at init
    assert losses[-1] < losses[0] - 0.5, losses  # the rotations carry the features -> captions
