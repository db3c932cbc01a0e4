"""Checks of scripts/gpu_smoke.sh that are a few lines of Python each.

    python scripts/gpu_smoke_checks.py fp8-shapes   Transformer Engine's FP8 GEMMs forward and backward
        at the sequence x micro-batch sizes of the 7B configs (S1 ROSE 512 x 4; LLaVA's 985 tokens
        padded to 986 x 4 as the preflight asks) and the 7B widths; the preflight refuses 985 x 4
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fp8_shapes() -> None:
    import torch
    import transformer_engine.pytorch as te
    from transformer_engine.common.recipe import DelayedScaling, Format

    from megatron_ext.training import preflight
    from megatron_ext.training.config import ConfigError, load_config

    try:
        preflight.check(load_config(None, ["train.fp8=hybrid", "data.seq_length=985", "train.micro_batch_size=4",
                                           "train.global_batch_size=8"]), 1)
        raise SystemExit("the preflight let 985 x 4 tokens through to FP8")
    except ConfigError as e:
        print("preflight:", e)
    recipe = DelayedScaling(fp8_format=Format.HYBRID)
    seen = []
    for rows, n_in, n_out in ((512 * 4, 3584, 3584), (986 * 4, 3584, 18944), (986 * 4, 18944, 3584)):
        layer = te.Linear(n_in, n_out, bias=False, params_dtype=torch.bfloat16, device="cuda")
        x = torch.randn(rows, n_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        with te.fp8_autocast(enabled=True, fp8_recipe=recipe):
            y = layer(x)
        y.float().square().mean().backward()
        assert torch.isfinite(y).all() and x.grad is not None and torch.isfinite(x.grad).all()
        seen.append(f"{rows}x{n_in}->{n_out}")
    torch.cuda.synchronize()
    print("fp8 shapes: ok", ", ".join(seen))


if __name__ == "__main__":
    {"fp8-shapes": fp8_shapes}[sys.argv[1]]()
