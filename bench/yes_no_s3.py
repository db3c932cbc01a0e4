"""Does a longer S3 teach the yes/no comparison? (not a test; docs/RESULTS.md, "Why yes/no stays at
chance")

    python -m bench.yes_no_s3 --init runs/main/rose/train/s2 --data runs/sweep/data \
        --assets runs/main/assets --out runs/yes_no_s3 --steps 30,90

From one trained S2 checkpoint (--init), S3 (configs/train/main/<method>-s3.yaml, everything
trainable) runs once per --steps value on the sweep's yes/no-balanced shards (--data, as
bench.sweep builds them), seed and data order unchanged; each run is exported and scored, greedy,
on bench.sweep's validation split (easy-VQA TRAIN images after the served ones; never the test
split), per kind of question with the balanced yes/no accuracy. bench.yes_no_text measured that the
LLM needs 25-50 steps of the comparison in words before it can answer it; S3's 30 mixed steps hold
about half of that. A finished run (its export scored) is skipped, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from bench.common import machine_load
from bench.sweep_eval import score_export, validation_questions
from mainjob import inference, training
from mainjob.settings import SIZES

log = logging.getLogger("bench.yes_no_s3")


def run(init: Path, manifest: Path, assets: Path, out: Path, method: str, steps: int, questions) -> dict:
    done = out / f"s3-{steps}" / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    cell = done.parent
    llm, tower = assets / "smollm2-135m-instruct", assets / "efficientnet-lite0"
    size = dataclasses.replace(SIZES["default"], balance_yes_no=True)
    t0 = time.time()
    trained = training.train(cell, method, ("s3",), size, str(manifest), llm, tower, echo=False,
                             extra={"s3": [f"train.init_from={init.resolve()}", f"train.steps={steps}",
                                           "log.wandb=false"]})
    hf_dir, _ = inference.export(cell, trained["s3"]["run_dir"], llm, echo=False)
    losses = [m["loss"] for m in trained["s3"]["metrics"]]
    result = dict(steps=steps, init=str(init), loss_first=losses[0], loss_last=losses[-1],
                  validation=score_export(hf_dir, questions), wall_s=round(time.time() - t0, 1), load=machine_load())
    done.write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="a trained S2 run directory (its latest checkpoint)")
    ap.add_argument("--data", required=True, help="the sweep's data folder (yes/no-balanced shards)")
    ap.add_argument("--assets", required=True, help="the main job's assets folder (SmolLM2, EfficientNet)")
    ap.add_argument("--out", default="runs/yes_no_s3")
    ap.add_argument("--method", default="rose")
    ap.add_argument("--steps", default="30,90", help="S3 lengths to compare")
    ap.add_argument("--val-images", type=int, default=40)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    manifest = Path(args.data) / "pipeline" / "40_shards" / "manifest.json"
    for path in (Path(args.init), manifest, Path(args.assets)):
        if not path.exists():
            ap.error(f"{path} does not exist")
    questions = validation_questions(SIZES["default"].easyvqa_images, args.val_images)
    out = Path(args.out)
    for steps in [int(s) for s in args.steps.split(",")]:
        r = run(Path(args.init), manifest, Path(args.assets), out, args.method, steps, questions)
        v = r["validation"]
        kinds = "  ".join(f"{k} {p['accuracy']:.3f}" for k, p in v["kinds"].items())
        log.info("S3 %d steps: loss %.3f -> %.3f, validation %.3f (%s; yes/no balanced %.3f), %s",
                 steps, r["loss_first"], r["loss_last"], v["accuracy"], kinds,
                 v["yes_no_balanced"], r["load"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
