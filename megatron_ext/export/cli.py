"""python -m megatron_ext.export: a training checkpoint to a Hugging Face folder."""

from __future__ import annotations

import logging

from megatron_ext.export.checkpoint import export_checkpoint
from pvcommon.argparser import ArgumentParser
from pvcommon.errors import run_cli


def main(argv=None) -> None:
    ap = ArgumentParser(description="Export a training checkpoint to a Hugging Face folder "
                                             "(load with trust_remote_code=True).")
    ap.add_argument("--checkpoint", required=True, help="a run dir, its checkpoints/ dir or one step dir")
    ap.add_argument("--out", required=True, help="the folder to write")
    ap.add_argument("--tokenizer", help="HF tokenizer dir (default: the run's data.tokenizer)")
    ap.add_argument("--image-processor", help="dir with preprocessor_config.json (default: the run's "
                                              "vision tower dir)")
    ap.add_argument("--vision", help="the encoder of a run trained on precomputed features")
    ap.add_argument("--max-shard-size", default="2GB")
    ap.add_argument("--evaluation", help="results.json of python -m megatron_ext.evaluate, for the "
                                         "model card's scores (README.md)")
    ap.add_argument("--overwrite", action="store_true",
                    help="write into a non-empty --out: replaces the files an export writes, keeps others")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = run_cli(export_checkpoint, args.checkpoint, args.out, args.tokenizer, args.image_processor,
                  args.vision, args.max_shard_size, args.overwrite, args.evaluation)
    print(f"exported to {out}: AutoModelForCausalLM.from_pretrained('{out}', trust_remote_code=True)")
