"""The main job: web image-text pairs to a trained, exported model, in one command.

    python -m mainjob.run                      # ROSE S1 -> S2 -> S3, default size
    python -m mainjob.run --method llava       # or vlora, vora
    python -m mainjob.run --size smallest      # the end-to-end test's setting

SmolLM2-135M-Instruct and frozen EfficientNet-Lite0 (converted once from their PyPI packages)
learn easy-VQA from web pairs: a local web serves easy-VQA's train images with the hostile cases,
the Ray data pipeline turns them into shards, each stage instruction-tunes on the images' own
questions, and the export answers held-out test questions: the report compares its accuracy with
the question-only prior and with shuffled images.

Writes under --out (default runs/main): assets/ and data/ (shared by the methods), and per method
<method>/train/<stage>/, hf/, logs/, report/. Re-running after an interruption continues: the data
pipeline resumes its stages and finished training stages are skipped."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from mainjob import assets, data, dry_run, inference, report, training
from mainjob.proc import StepFailed
from mainjob.settings import METHODS, SIZES
from megatron_ext.export.model_card import write_model_card
from pvcommon.argparser import ArgumentParser
from pvcommon.errors import UserError
from pvcommon.errors import report as report_error
from pvcommon.runlock import lock_run_dir

log = logging.getLogger("mainjob")


def _claim(out_root: Path, size_name: str) -> None:
    """An output root holds one size: resuming a run of another size would mix corpora and steps."""
    marker = out_root / "size"
    lock_run_dir(out_root, "--out")  # a second main job on this root stops here, naming this pid
    if marker.is_file() and marker.read_text().strip() != size_name:
        raise StepFailed(f"{out_root} holds a --size {marker.read_text().strip()} run; pass another "
                         f"--out for --size {size_name}, or delete {out_root}")
    marker.write_text(size_name)


def main_job(method: str, size_name: str, out_root: Path, echo: bool = True) -> dict:
    t0 = time.time()
    stages, size = METHODS[method], SIZES[size_name]
    out = out_root / method
    shared = out_root / "assets"
    _claim(out_root, size_name)
    timings = {}

    def timed(name, fn, *args, **kwargs):
        log.info("== %s", name)
        t = time.time()
        result = fn(*args, **kwargs)
        timings[name] = round(time.time() - t, 1)
        return result

    llm = timed("assets: SmolLM2-135M-Instruct", assets.llm, shared)
    tower = timed("assets: EfficientNet-Lite0", assets.vision_tower, shared)
    captioner = timed("assets: captioner", assets.captioner, shared)
    data_summary = timed("data pipeline", data.build, out_root / "data", size, captioner, echo=echo)
    trained = timed("training", training.train, out, method, stages, size,
                    data_summary["manifest"], llm, tower, echo=echo)
    hf_dir, _ = timed("export", inference.export, out, trained[stages[-1]]["run_dir"], llm, echo=echo)
    evaluation = timed("held-out test questions", inference.evaluate, out, hf_dir, size.test_questions, echo=echo)
    write_model_card(hf_dir, method, trained[stages[-1]]["run_dir"], Path(evaluation["results"]).with_suffix(".json"))
    image_path, question, truth = inference.held_out_question()
    held_out = timed("answer a held-out question", inference.answer, hf_dir, image_path, question)

    summary = dict(
        method=method, size=size_name, finished=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        wall_s=round(time.time() - t0, 1), timings_s=timings,
        data=dict(input=data_summary["input"], kept=data_summary["kept"], dropped=data_summary["dropped"],
                  dropped_by_reason=data_summary["dropped_by_reason"], manifest=data_summary["manifest"],
                  report=str(Path(data_summary["manifest"]).parent.parent / "report" / "index.html")),
        stages=report.stage_rows(trained), export=str(hf_dir), evaluation=evaluation,
        held_out=dict(held_out, image=image_path, truth=truth))
    report.write(out, summary, trained)  # adds summary["report"]
    return summary


def print_summary(s: dict) -> None:
    d = s["data"]
    print(f"\n== main job ({s['method']}, {s['size']}) done in {s['wall_s']:.0f} s")
    print(f"data      {d['input']} URLs -> {d['kept']} samples kept, {d['dropped']} dropped "
          f"({', '.join(f'{k} {v}' for k, v in d['dropped_by_reason'].items())})")
    print(f"          shards: {d['manifest']}\n          data report: {d['report']}")
    for r in s["stages"]:
        print(f"train {r['stage']:<3} {r['steps']:>3} steps  loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}  "
              f"{r['samples_per_s']:.1f} samples/s  {r['tokens_per_s']:.0f} tokens/s  {r['run_dir']}")
    e, h = s["evaluation"], s["held_out"]
    print(f"export    {s['export']}")
    print(f"test      {e['questions']} held-out easy-VQA questions ({e['images']} images): accuracy "
          f"{e['greedy']['matched']:.3f}, shuffled images {e['greedy']['shuffled']:.3f}, question-only prior "
          f"{e['prior']:.3f} (standard error {e['stderr']:.3f})")
    print(f"answer    {h['image']}: {h['question']!r} -> {h['answer']!r} (truth {h['truth']!r})")
    if "merged_equal" in h:
        print(f"          merge_vision -> {h['merged_class']}: same greedy tokens = {h['merged_equal']}, "
              f"max |logit diff| along the answer {h['merged_max_logit_diff']:.1e}")
    print(f"report    {s['report']} (loss curves, summary.json)")
    print("timings   " + ", ".join(f"{k} {v:.0f}s" for k, v in s["timings_s"].items()))


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=sorted(METHODS), default="rose")
    p.add_argument("--size", choices=sorted(SIZES), default="default")
    p.add_argument("--out", default="runs/main", help="output root (default runs/main)")
    p.add_argument("--quiet", action="store_true", help="child processes' output only to the log files")
    p.add_argument("--dry-run", action="store_true", help="check each stage's config, print it resolved "
                   "and what would run; start nothing (mainjob/dry_run.py)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        if args.dry_run:
            print(dry_run.describe(args.method, args.size, Path(args.out).resolve()), end="")
            return 0
        summary = main_job(args.method, args.size, Path(args.out).resolve(), echo=not args.quiet)
    except StepFailed as e:
        log.error("%s", e)
        return 1
    except UserError as e:
        return report_error(e)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
