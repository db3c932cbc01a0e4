"""A small, real ROSE S1 run: the VRMG learns to steer a frozen LLM with per-image rotations.

Synthetic data: K "images" (fixed random visual-feature tensors) each paired with its own caption
(fixed random token sequence); the frozen LLM alone cannot tell which caption goes with which
image, so the loss can only fall if the rotations carry the image. Runs Megatron's
forward-backward schedule (1F1B when PP > 1) at any TP/PP:

    torchrun --nproc-per-node 2 -m megatron_ext.demo --tp 2
    torchrun --nproc-per-node 2 -m megatron_ext.demo --pp 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger("demo")


def synthetic_pairs(n_images: int, seq: int, visual_tokens: int, visual_dim: int, vocab: int, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, visual_tokens, visual_dim, generator=g)
    captions = torch.randint(0, vocab, (n_images, seq + 1), generator=g)
    return images, captions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--micro-batches", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--out", default="runs/demo")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_ext.model import build_rose
    from megatron_ext.parallel import init_parallel, shutdown
    from megatron_ext.presets import load_preset

    init_parallel(args.tp, args.pp)
    torch.manual_seed(0)
    preset = load_preset(args.preset)
    model = build_rose(preset, backend="auto")
    for p in model.language_model.parameters():  # S1: only the VRMG trains
        p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr)
    seq = 16
    images, captions = synthetic_pairs(args.images, seq, 8, preset["vision"]["hidden_size"],
                                       preset["llm"]["vocab_size"])
    g = torch.Generator().manual_seed(1)
    last = parallel_state.is_pipeline_last_stage()
    first_rank = torch.distributed.get_rank() == 0
    out = Path(args.out)
    metrics = None
    if last and parallel_state.get_tensor_model_parallel_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        metrics = open(out / "metrics.jsonl", "w")

    def batches():
        while True:
            idx = torch.randint(0, args.images, (args.micro_batch,), generator=g)
            cap = captions[idx]
            yield dict(input_ids=cap[:, :-1], labels=cap[:, 1:], visual_features=images[idx],
                       position_ids=torch.arange(seq).expand(args.micro_batch, seq))

    def forward_step(data_iterator, model):
        b = next(data_iterator)  # every pipeline stage reads the micro-batch's visual features
        loss = model(b["input_ids"], b["position_ids"], None, b["visual_features"], labels=b["labels"])
        return loss, lambda o: (o.mean(), {"loss": o.mean().detach()})

    data = batches()
    schedule = get_forward_backward_func()
    n_gen = sum(p.numel() for p in trainable)
    if first_rank:
        log.info("ROSE S1 demo: TP=%d PP=%d, equipped layers on rank 0: %s, %d trainable VRMG "
                 "parameters on this stage", args.tp, args.pp, model.equipped, n_gen)
    losses = []
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        res = schedule(forward_step_func=forward_step, data_iterator=data, model=[model],
                       num_microbatches=args.micro_batches, seq_length=seq,
                       micro_batch_size=args.micro_batch, forward_only=False)
        opt.step()
        dt = time.perf_counter() - t0
        if last:
            loss = torch.stack([r["loss"] for r in res]).mean().item()
            losses.append(loss)
            if metrics:
                samples = args.micro_batch * args.micro_batches
                metrics.write(json.dumps(dict(step=step, loss=loss, samples_per_s=samples / dt,
                                              tokens_per_s=samples * seq / dt)) + "\n")
                if step == 1 or step % 10 == 0 or step == args.steps:
                    log.info("step %3d  loss %.4f  %.1f samples/s", step, loss, samples / dt)
    if metrics:
        metrics.close()
        log.info("loss %.4f -> %.4f over %d steps (metrics: %s)", losses[0], losses[-1], args.steps,
                 out / "metrics.jsonl")
    shutdown()


if __name__ == "__main__":
    main()
