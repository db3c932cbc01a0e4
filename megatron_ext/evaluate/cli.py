"""python -m megatron_ext.evaluate MODEL [MODEL ...] --out DIR [--data DATA]: every model on the
same questions, images, captions and text; one column per model in results.md (e.g. the base LLM
and the export after each stage, for the language-prior check).

--data names the images (evaluate/data.py): held-out shards (the pipeline's
validation_manifest.json), a URL list, or easyvqa (the default: its test split). Each part runs
where the data has what it needs: captions (caption loss, right vs shuffled images), labels (with
--label-template: label accuracy by ranking the labels' captions), vqa (question-answer pairs:
accuracy against the question prior and shuffled images, per kind of question), text, cost."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_ext.evaluate import data as evaldata
from megatron_ext.evaluate import report
from megatron_ext.evaluate.captions import caption_loss
from megatron_ext.evaluate.cost import sample_cost
from megatron_ext.evaluate.heldout_text import heldout_text, perplexity
from megatron_ext.evaluate.labels import label_accuracy
from megatron_ext.evaluate.scorer import ExportScorer
from megatron_ext.evaluate.vqa import QuestionPrior, evaluate_vqa, questions_of
from megatron_ext.training.config import DEFAULT_PROMPT

log = logging.getLogger(__name__)
PARTS = ("vqa", "captions", "labels", "text", "cost")


def resolve_model(spec: str, tmp: Path, args) -> tuple[str, Path]:
    """NAME=PATH or PATH -> (name, HF folder); a training run is exported into tmp first."""
    name, _, path = spec.rpartition("=")
    path = Path(path)
    name = name or path.name
    if (path / "config.json").is_file():
        return name, path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such export folder or training run")
    # a training run only: scoring an export needs neither Megatron nor the training stack
    from megatron_ext.export.checkpoint import export_checkpoint

    log.info("%s is not an export folder: exporting its latest checkpoint first", path)
    out = export_checkpoint(path, tmp / name, args.tokenizer, args.image_processor, args.vision)
    return name, out


def _progress(total: int, desc: str):
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


def caption_prompt(scorer, args) -> str:
    """--caption-prompt, else the export's recorded data.prompt, else training's default."""
    return args.caption_prompt or scorer.training.get("prompt") or DEFAULT_PROMPT


def evaluate_model(scorer, data, prior, text, args) -> tuple[dict, dict]:
    """data: {"questions", "answers", "captioned", "labelled", "first"} of the evaluated data set."""
    result, records = {"sees_images": scorer.sees_images}, {}
    prompt = caption_prompt(scorer, args)
    if "vqa" in args.parts:
        result["vqa"], records["vqa"] = evaluate_vqa(scorer, data["questions"], prior, data["answers"],
                                                     args.batch_size, args.max_new_tokens, args.seed,
                                                     _progress, args.vqa)
    if "captions" in args.parts:
        result["captions"] = caption_loss(scorer, data["captioned"], prompt, args.batch_size, args.seed, _progress)
    if "labels" in args.parts:
        result["labels"], records["labels"] = label_accuracy(scorer, data["labelled"], args.label_template,
                                                             prompt, args.batch_size, args.seed, _progress)
    if "text" in args.parts:
        result["text"] = perplexity(scorer, text)
    if "cost" in args.parts:
        text_in, image, text_out = data["first"]
        result["cost"] = sample_cost(scorer, text_in or prompt, image, text_out, args.visual_tokens)
    result["latency"] = scorer.latency_summary()
    return result, records


def load_data(args) -> tuple[dict, object, str]:
    """-> (the data's parts, the question prior or None, where the prior comes from); narrows
    args.parts to what the data supports (a part asked for by name that it cannot run is an error)."""
    samples = evaldata.load(args.data, args.url_col, args.caption_col, args.label_col)
    if not samples:
        raise ValueError(f"--data {args.data}: no samples")
    questions = questions_of(samples, args.limit) if any(s.qa for s in samples) else []
    if questions and args.limit:  # the images of the questions scored, as before
        keys = {q.image_id for q in questions}
        samples = [s for s in samples if s.key in keys]
    samples = samples[:args.max_images] if args.max_images else samples
    data = {"questions": questions, "answers": tuple(sorted({q.answer for q in questions})),
            "captioned": [(s.key, s.image, s.caption) for s in samples if s.caption],
            "labelled": samples,
            "first": ((questions[0].text, questions[0].image_path, questions[0].answer) if questions
                      else (None, samples[0].image, samples[0].caption or "."))}
    supported = {"vqa": bool(questions), "captions": len(data["captioned"]) >= 2,
                 "labels": bool(args.label_template) and any(s.label for s in samples),
                 "text": True, "cost": True}
    missing = [p for p in args.parts if not supported[p]]
    if missing and args.parts_given:
        why = {"vqa": "question-answer pairs (a qa column)", "captions": "two or more captioned images",
               "labels": "--label-template and a label column"}
        raise ValueError(f"--parts {','.join(missing)}: --data {args.data} lacks "
                         + "; ".join(why[p] for p in missing))
    if missing:
        log.info("--data %s: skipping %s (not in the data)", args.data, ", ".join(missing))
    args.parts = [p for p in args.parts if supported[p]]
    prior, source = None, None
    if "vqa" in args.parts:
        if args.data == "easyvqa" and not args.prior_data:
            prior, source = QuestionPrior.from_train(), "easy-VQA train split"
        else:
            prior_path = args.prior_data
            sibling = Path(args.data).parent / "manifest.json"
            if prior_path is None and Path(args.data).name != "manifest.json" and sibling.is_file():
                prior_path = str(sibling)  # held-out shards: the training shards beside them
            if prior_path:
                pairs = [(q.question, q.answer) for s in evaldata.load(prior_path, args.url_col, args.caption_col,
                                                                      args.label_col) for q in s.qa]
                prior, source = QuestionPrior(pairs), prior_path
            else:
                prior = QuestionPrior((q.text, q.answer) for q in questions)
                source = "the evaluated questions themselves (optimistic: pass --prior-data TRAINING)"
                log.warning("question prior from %s", source)
    return data, prior, source


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="HF export folders or training run directories (NAME=PATH names a column)")
    ap.add_argument("--out", required=True, help="folder for results.json, results.md, results.png")
    ap.add_argument("--data", default="easyvqa", help="held-out shards (a pipeline manifest .json), a URL list "
                                                     "(.csv/.parquet: url, caption[, label][, qa]) or easyvqa "
                                                     "(default: its test split)")
    ap.add_argument("--label-template", help='caption of each label, e.g. "a photo of a {}": label accuracy '
                                             "by ranking the labels' captions (the labels part)")
    ap.add_argument("--label-col", default="label", help="the label column (URL list, or the shards' .json)")
    ap.add_argument("--url-col", default="url")
    ap.add_argument("--caption-col", default="caption")
    ap.add_argument("--prior-data", help="training data for the question prior (default: easy-VQA's train "
                                         "split; held-out shards: the manifest.json beside them)")
    ap.add_argument("--limit", type=int, help="the first N questions (easy-VQA: of 9,673); their images for "
                                              "the other parts")
    ap.add_argument("--max-images", type=int, help="the first N images for captions and labels (default: all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--visual-tokens", type=int, help="visual tokens per image for the LLM's FLOPs where "
                                                       "the image is in the sequence (default: the export's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--vqa", default="greedy,ranking", help="greedy and/or ranking (ranking scores all 13 "
                                                             "answers: 13 forwards per question)")
    ap.add_argument("--caption-prompt", default=None, help="the user turn before a caption (default: the "
                                                           "export's recorded data.prompt)")
    ap.add_argument("--text", help="held-out plain-text file (default: the Python Language Reference prose)")
    ap.add_argument("--text-chars", type=int, default=20_000)
    ap.add_argument("--parts", help=f"comma-separated subset of {','.join(PARTS)} (default: all the data supports)")
    ap.add_argument("--seed", type=int, default=0, help="the fixed image permutation")
    ap.add_argument("--tokenizer", help="for a training run: HF tokenizer dir (default: the run's)")
    ap.add_argument("--image-processor", help="for a training run trained on features")
    ap.add_argument("--vision", help="for a training run trained on precomputed features: its encoder")
    args = ap.parse_args(argv)
    args.parts_given = args.parts is not None
    args.parts = [p.strip() for p in (args.parts or ",".join(PARTS)).split(",") if p.strip()]
    args.vqa = tuple(k.strip() for k in args.vqa.split(",") if k.strip())
    if not args.vqa or set(args.vqa) - {"greedy", "ranking"}:
        ap.error(f"--vqa {','.join(args.vqa)}: choose greedy and/or ranking")
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts {','.join(unknown)}: choose from {','.join(PARTS)}")
    if args.batch_size < 1:
        ap.error("--batch-size must be at least 1")
    if args.label_template is not None and "{}" not in args.label_template:
        ap.error(f'--label-template {args.label_template!r}: put {{}} where the label goes, e.g. "a photo of a {{}}"')
    if "labels" in args.parts and args.parts_given and not args.label_template:
        ap.error('--parts labels needs --label-template, e.g. "a photo of a {}"')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data, prior, prior_source = load_data(args)
    text, source = heldout_text(args.text, args.text_chars) if "text" in args.parts else (None, None)
    results = {"command": "python -m megatron_ext.evaluate " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
               "data": args.data, "parts": args.parts, "batch_size": args.batch_size, "device": args.device,
               "text_source": source, "prior_source": prior_source, "limit": args.limit, "seed": args.seed,
               "models": {}}
    records = {}
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(prefix="evaluate-export-") as tmp:
        for spec in args.models:
            name, folder = resolve_model(spec, Path(tmp), args)
            if name in results["models"]:
                raise ValueError(f"two models are named {name!r}: name them NAME=PATH")
            log.info("evaluating %s (%s)", name, folder)
            scorer = ExportScorer(folder, args.device, dtype)
            results["models"][name], records[name] = evaluate_model(scorer, data, prior, text, args)
            results["models"][name]["path"] = str(folder if folder.parent != Path(tmp) else spec)
            del scorer
    written = report.write(results, Path(args.out), records)
    print(report.markdown(results))
    print("wrote " + ", ".join(str(p) for p in written))
    return results
