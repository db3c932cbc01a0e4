"""Four ways to see, one LLM, one data set, one budget: LLaVA (the image's tokens in the input
sequence), ROSE (vision-guided rotations of the LLM's weights), VLoRA (per-image low-rank weights)
and VoRA (vision as LoRA, the image's patches in the sequence) trained by the main job from the
same SmolLM2-135M-Instruct and EfficientNet-Lite0 on the same easy-VQA shards, with the same
steps, batch and schedule per stage (configs/train/main/), then measured side by side:

    python -m bench.fourway [--out runs/fourway] [--methods llava,rose,vlora,vora] [--size default]

  accuracy      the main job's held-out score of each final export (greedy, matched images,
                shuffled images, question-only prior), and a curve over training: every saved
                checkpoint of every stage on fewer questions;
  language      held-out text perplexity of the base LLM and of each stage's checkpoint;
  captions      caption loss with matched vs shuffled images (the final exports);
  cost          training wall time and FLOPs (megatron_ext/training/mfu.py's 3 x forward),
                inference GFLOPs per sample and one forward's latency, at the trained 25 visual
                tokens and at 100 (320-px images): bench/inference_cost.py, which also measures
                any exports on their own.

Writes <out>/fourway.json, fourway.md (the results page) and two plots (`--page` rewrites them
from fourway.json); part 3 of docs/RESULTS.md is the page of one such run. The comparison tuned
alike (one grid for every method, chosen on validation, seeds) is bench/sweep.py's, whose results
are docs/results/fourway.json. Resumable: a method fourway.json
holds is kept, the main job skips the stages it finished, and each evaluation whose results.json
exists is kept."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import fourway_page
from bench.common import machine_load
from bench.inference_cost import latency
from mainjob import assets
from mainjob.run import main_job
from mainjob.settings import METHODS, ROOT, SIZES

log = logging.getLogger("bench.fourway")
ORDER = ("rose", "llava", "vlora", "vora")
SEQ_LENGTH, TRAINED_TOKENS, LARGER_IMAGE = 24, 25, 320  # configs/train/main/*.yaml; 320 px -> 10 x 10 tokens


def evaluate(models: dict, out: Path, args: list) -> dict:
    """python -m megatron_ext.evaluate NAME=PATH ... --out out (a checkpoint is exported first)."""
    if not (out / "results.json").is_file():
        cmd = [sys.executable, "-m", "megatron_ext.evaluate", *(f"{k}={v}" for k, v in models.items()),
               "--out", str(out), *args]
        log.info("$ %s", " ".join(cmd))
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "evaluate.log", "w") as f:
            code = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        if code:
            raise RuntimeError(f"evaluation failed (exit {code}): see {out / 'evaluate.log'}")
    return json.loads((out / "results.json").read_text())


def checkpoints(run: Path, method: str) -> dict:
    """Every saved checkpoint of every stage but the last stage's final one (the main job scored
    that export), named by the method's cumulative step: {'rose@150': step dir}. Stage configs
    save every 50 steps and keep 4."""
    points, offset = {}, 0
    for stage in METHODS[method]:
        steps = sorted((run / "train" / stage / "checkpoints").glob("step_*"))
        for step_dir in steps:
            points[f"{method}@{offset + int(step_dir.name[5:])}"] = step_dir
        offset += int(steps[-1].name[5:])
    points.pop(f"{method}@{offset}")
    return points


def training_cost(summary: dict, method: str) -> dict:
    from megatron_ext.core.presets import load_preset
    from megatron_ext.training.mfu import train_flops_per_sample

    per_sample = train_flops_per_sample(load_preset("main-smollm2"), method, SEQ_LENGTH, TRAINED_TOKENS)
    stages = {r["stage"]: r for r in summary["stages"]}
    samples = {s: r["steps"] * 16 for s, r in stages.items()}  # global batch 16 in every stage
    return dict(wall_s={s: r["wall_s"] for s, r in stages.items()},
                samples={s: n for s, n in samples.items()},
                pflops=sum(samples.values()) * per_sample / 1e15, train_gflops_per_sample=per_sample / 1e9)


def run(out: Path, methods: list, size: str) -> dict:
    t0 = time.time()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    loads = [machine_load()]
    results = dict(command="python -m bench.fourway " + " ".join(sys.argv[1:]), started=started,
                   size=size, methods={}, loads=loads)
    llm = assets.llm(out / "assets")
    done = out / "fourway.json"  # a resumed run keeps the methods an earlier one finished
    finished = json.loads(done.read_text())["methods"] if done.is_file() else {}
    curve_q = SIZES[size].test_questions * 8 // 25  # 160 of 500: a checkpoint in under a minute
    for method in methods:  # each method's numbers are on disk before the next one trains
        if "curve" in finished.get(method, {}):
            log.info("== %s: finished by an earlier run (%s)", method, done)
            results["methods"][method] = finished[method]
            (out / "fourway.json").write_text(json.dumps(results, indent=2, default=str))
            continue
        log.info("== %s: the main job", method)
        summary = main_job(method, size, out, echo=False)
        results["methods"][method] = dict(main_job=summary, training=training_cost(summary, method))
        points = checkpoints(out / method, method)
        curve = evaluate({"base": llm, **points}, out / "fourway" / f"curve-{method}",
                         ["--limit", str(curve_q), "--vqa", "greedy", "--parts", "vqa,text"])
        results["methods"][method]["curve"] = {
            name: dict(step=int(name.split("@")[1]) if "@" in name else 0, vqa=m["vqa"], text=m["text"])
            for name, m in curve["models"].items()}
        loads.append(machine_load())
        (out / "fourway.json").write_text(json.dumps(results, indent=2, default=str))  # so far
    hf = {m: results["methods"][m]["main_job"]["export"] for m in methods}
    final = evaluate({"base": llm, **hf}, out / "fourway" / "final", ["--parts", "captions,text", "--limit", str(SIZES[size].test_questions)])
    results["final"] = final["models"]
    results["latency"] = {str(s): latency(hf, s) for s in (160, LARGER_IMAGE)}
    loads.append(machine_load())
    results["wall_s"] = round(time.time() - t0, 1)
    results["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["machine"] = fourway_page.machine()
    (out / "fourway.json").write_text(json.dumps(results, indent=2, default=str))
    page = fourway_page.write(results, out)
    log.info("wrote %s", page)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/fourway")
    ap.add_argument("--methods", default=",".join(ORDER))
    ap.add_argument("--size", default="default", choices=sorted(SIZES))
    ap.add_argument("--page", action="store_true", help="only rewrite the page and plots from <out>/fourway.json")
    args = ap.parse_args(argv)
    if args.page:
        out = Path(args.out).resolve()
        print(fourway_page.write(json.loads((out / "fourway.json").read_text()), out))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods {','.join(unknown)}: choose from {','.join(METHODS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    run(Path(args.out).resolve(), methods, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
