"""`python -m mainjob.run --dry-run`: each stage's training config resolved as the main job will run
it, checked against its world size and the method (megatron_ext/training/dry_run.py's checks that need
no file the job has yet to write), and the steps it would take; nothing is downloaded, built or
started. The paths the job creates (assets, shards, the previous stage) are named, not checked."""

from __future__ import annotations

from pathlib import Path

import yaml

from mainjob.settings import METHODS, PROCESSES, SIZES, train_config
from mainjob.training import stage_steps
from megatron_ext.training.model import check_training, trainable_groups
from megatron_ext.training.config import load_config, validate


def describe(method: str, size_name: str, out_root: Path) -> str:
    size, out, lines = SIZES[size_name], out_root / method, []
    assets = out_root / "assets"
    lines.append(f"# main job: {method}, size {size_name}, under {out_root}")
    lines.append(f"#   assets: {assets}; data pipeline: {out_root / 'data'} ({size.easyvqa_images} easy-VQA "
                 f"images + {size.good_images} generated)")
    previous = None
    for stage in METHODS[method]:
        config = train_config(method, stage)
        steps = stage_steps(config, size)
        overrides = [f"train.steps={steps}", f"log.run_dir={out / 'train' / stage}",  # the paths it will write
                     f"data.manifest={out_root / 'data' / 'pipeline' / '40_shards' / 'manifest.json'}"]
        cfg = load_config(str(config), overrides)
        dp = validate(cfg, PROCESSES)
        trainable = trainable_groups(cfg)
        check_training(cfg, trainable)
        start = f"from {previous}" if previous else "from the base LLM"
        lines.append(f"# {stage}: {config.relative_to(config.parents[3])}, {steps} steps on {PROCESSES} "
                     f"processes (DP {dp}), trains {', '.join(trainable)}, starts {start}; resolved config "
                     f"(model weights, tokenizer and init_from filled in at run time):")
        lines.append(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
        previous = out / "train" / stage
    lines.append(f"# then: export to {out / 'hf'}, evaluate {size.test_questions} held-out questions, "
                 f"report in {out / 'report'}")
    return "\n".join(lines) + "\n"
