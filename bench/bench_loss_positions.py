"""The output layer only where the loss reads (megatron_ext/core/loss_positions.py), timed: one
forward + backward of the main job's model (SmolLM2-135M shapes, random weights) on a
question-answer micro-batch, every position through the output layer against the loss's only.

    python -m bench.bench_loss_positions [--method rose] [--stage s1] [--reps 5]

s1 trains the method's generator only (the LLM frozen: the backward reaches the activations, not
the LLM's weights); s3 trains everything. Prints the medians side by side and the machine load.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import machine, machine_load, table, time_fn
from megatron_ext.core.presets import resolve_preset
from megatron_ext.methods import build_model
from megatron_ext.parallel import init_parallel

PRESET = "main-smollm2"


def micro_batch(preset: dict, batch: int, seq: int, answer: int, visual_tokens: int = 25) -> dict:
    """The main job's micro-batch: 8 samples of 24 tokens, the loss on the last `answer` of them."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, preset["llm"]["vocab_size"], (batch, seq), generator=g)
    mask = torch.zeros(batch, seq)
    mask[:, -answer:] = 1.0
    return dict(input_ids=ids, position_ids=torch.arange(seq).expand(batch, seq), attention_mask=None,
                visual_features=torch.randn(batch, visual_tokens, preset["vision"]["hidden_size"], generator=g),
                labels=torch.roll(ids, -1, dims=1)), mask


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="rose")
    p.add_argument("--stage", choices=("s1", "s3"), default="s1")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=24)
    p.add_argument("--answer", type=int, default=3, help="loss tokens per sample (answer + end of turn)")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    init_parallel(1, 1)
    preset = resolve_preset(PRESET)
    torch.manual_seed(0)
    model = build_model(preset, method=args.method, backend="local")
    for name, param in model.named_parameters():  # S1: the generator alone; S3: everything
        param.requires_grad_(args.stage == "s3" or not name.startswith("language_model."))
    batch, mask = micro_batch(preset, args.batch, args.seq, args.answer)

    def step(pass_mask: bool):
        def run():
            model.zero_grad(set_to_none=True)
            per_token = model(**batch, **({"loss_mask": mask} if pass_mask else {}))
            ((per_token * mask).sum() / mask.sum()).backward()
        return run

    rows = []
    for _ in range(2):  # interleaved, so that a change of load hits both alike
        for label, pass_mask in (("every position", False), ("loss positions only", True)):
            rows.append([label, f"{time_fn(step(pass_mask), warmup=1, reps=args.reps):.3f}"])
    full = sorted(float(r[1]) for r in rows if r[0] == "every position")[0]
    picked = sorted(float(r[1]) for r in rows if r[0] != "every position")[0]
    print(f"{args.method} {args.stage}, micro-batch {args.batch} x {args.seq} tokens, loss on {args.answer} "
          f"per sample; {machine()}; {machine_load()}")
    print(table(rows, ["output layer on", "forward + backward, median s"]))
    print(f"best of each: {full:.3f} s -> {picked:.3f} s ({1 - picked / full:.0%} less)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
