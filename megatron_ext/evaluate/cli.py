"""python -m megatron_ext.evaluate MODEL [MODEL ...] --out DIR: every model on the same questions,
images, captions and text; one column per model in results.md (e.g. the base LLM and the export
after each stage, for the language-prior check)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)
PARTS = ("vqa", "captions", "text", "cost")


def resolve_model(spec: str, tmp: Path, args) -> tuple[str, Path]:
    """NAME=PATH or PATH -> (name, HF folder); a training run is exported into tmp first."""
    name, _, path = spec.rpartition("=")
    path = Path(path)
    name = name or path.name
    if (path / "config.json").is_file():
        return name, path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such export folder or training run")
    from megatron_ext.export import export_checkpoint

    log.info("%s is not an export folder: exporting its latest checkpoint first", path)
    out = export_checkpoint(path, tmp / name, args.tokenizer, args.image_processor, args.vision)
    return name, out


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


def evaluate_model(scorer, questions, prior, answers, captioned, text, args) -> tuple[dict, list]:
    from megatron_ext.evaluate.captions import caption_loss
    from megatron_ext.evaluate.cost import sample_cost
    from megatron_ext.evaluate.heldout_text import perplexity
    from megatron_ext.evaluate.vqa import evaluate_vqa

    result, records = {"sees_images": scorer.sees_images}, []
    if "vqa" in args.parts:
        result["vqa"], records = evaluate_vqa(scorer, questions, prior, answers, args.batch_size,
                                              args.max_new_tokens, args.seed, _progress, args.vqa)
    if "captions" in args.parts:
        result["captions"] = caption_loss(scorer, captioned, args.caption_prompt, args.batch_size,
                                          args.seed, _progress)
    if "text" in args.parts:
        result["text"] = perplexity(scorer, text)
    if "cost" in args.parts:
        q = questions[0]
        result["cost"] = sample_cost(scorer, q.text, q.image_path, q.answer, args.visual_tokens)
    result["latency"] = scorer.latency_summary()
    return result, records


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="HF export folders or training run directories (NAME=PATH names a column)")
    ap.add_argument("--out", required=True, help="folder for results.json, results.md, results.png")
    ap.add_argument("--limit", type=int, help="the first N easy-VQA test questions (default: all 9,673)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--visual-tokens", type=int, help="visual tokens per image for the LLM's FLOPs where "
                                                       "the image is in the sequence (default: the export's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--vqa", default="greedy,ranking", help="greedy and/or ranking (ranking scores all 13 "
                                                             "answers: 13 forwards per question)")
    ap.add_argument("--caption-prompt", default=None, help="the user turn before a caption (default: "
                                                           "the main job's data.prompt)")
    ap.add_argument("--text", help="held-out plain-text file (default: the Python Language Reference prose)")
    ap.add_argument("--text-chars", type=int, default=20_000)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--seed", type=int, default=0, help="the fixed image permutation")
    ap.add_argument("--tokenizer", help="for a training run: HF tokenizer dir (default: the run's)")
    ap.add_argument("--image-processor", help="for a training run trained on features")
    ap.add_argument("--vision", help="for a training run trained on precomputed features: its encoder")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.vqa = tuple(k.strip() for k in args.vqa.split(",") if k.strip())
    if not args.vqa or set(args.vqa) - {"greedy", "ranking"}:
        ap.error(f"--vqa {','.join(args.vqa)}: choose greedy and/or ranking")
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts {','.join(unknown)}: choose from {','.join(PARTS)}")
    if args.batch_size < 1:
        ap.error("--batch-size must be at least 1")
    return args


def main(argv=None) -> dict:
    from megatron_ext.data.easyvqa import answers as easyvqa_answers
    from megatron_ext.evaluate import report
    from megatron_ext.evaluate.captions import DEFAULT_PROMPT, captioned_test_images
    from megatron_ext.evaluate.heldout_text import heldout_text
    from megatron_ext.evaluate.scorer import ExportScorer
    from megatron_ext.evaluate.vqa import QuestionPrior, heldout_questions

    args = parse_args(argv)
    args.caption_prompt = args.caption_prompt or DEFAULT_PROMPT
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    questions = heldout_questions(args.limit)
    prior = QuestionPrior.from_train()
    captioned = captioned_test_images({q.image_id for q in questions})
    text, source = heldout_text(args.text, args.text_chars)
    results = {"command": "python -m megatron_ext.evaluate " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
               "batch_size": args.batch_size, "device": args.device, "text_source": source,
               "limit": args.limit, "seed": args.seed, "models": {}}
    records = {}
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(prefix="evaluate-export-") as tmp:
        for spec in args.models:
            name, folder = resolve_model(spec, Path(tmp), args)
            if name in results["models"]:
                raise ValueError(f"two models are named {name!r}: name them NAME=PATH")
            log.info("evaluating %s (%s)", name, folder)
            scorer = ExportScorer(folder, args.device, dtype)
            results["models"][name], records[name] = evaluate_model(
                scorer, questions, prior, easyvqa_answers(), captioned, text, args)
            results["models"][name]["path"] = str(folder if folder.parent != Path(tmp) else spec)
            del scorer
    written = report.write(results, Path(args.out), records)
    print(report.markdown(results))
    print("wrote " + ", ".join(str(p) for p in written))
    return results
