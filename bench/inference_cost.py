"""Inference cost of exports side by side: GFLOPs per easy-VQA sample (prompt + answer, one
forward) and that forward's latency, at the trained image size and a larger one, as
bench/fourway.py measures its trained exports. FLOPs and latency do not depend on the weights: any
exports of the same architectures give the same figures.

    python -m bench.inference_cost rose=runs/main/rose/hf llava=runs/main/llava/hf \\
        vlora=runs/main/vlora/hf vora=runs/main/vora/hf [--sizes 160,320] [--out DIR]

Prints a Markdown table (and writes it with cost.json under --out): counted GFLOPs (torch's
FlopCounterMode: encoder, generator and LLM GEMMs; attention kernels and triangular solves are not
in its table), the LLM's sequence and visual tokens, and one forward's median wall time over 5
runs interleaved across the exports."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench.common import interleaved, machine_load
from bench.fourway_page import machine
from megatron_ext.evaluate.cost import sample_cost
from megatron_ext.evaluate.scorer import ExportScorer
from megatron_ext.evaluate.vqa import heldout_questions


def latency(hf_dirs: dict, image_size: int, reps: int = 5) -> dict:
    """Median seconds of one forward over one easy-VQA sample (prompt + answer), images resized to
    image_size, with the counted GFLOPs and the visual tokens; interleaved across the models so the
    machine's load hits them alike. A model that cannot take the size says why."""
    import torch

    q = heldout_questions(1)[0]
    scorers, costs, refused = {}, {}, {}
    for name, path in hf_dirs.items():
        scorer = ExportScorer(path)
        # LLaVA's and VoRA's processors count placeholders from the resized image (VoRA resamples
        # its learned positions); ROSE's and VLoRA's generators read any number of tokens
        scorer.processor.image_processor.size = {"height": image_size, "width": image_size}
        try:
            costs[name] = sample_cost(scorer, q.text, q.image_path, q.answer)
        except Exception as e:  # noqa: BLE001 - recorded in the results: the model cannot take this size
            refused[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            continue
        scorers[name] = scorer
    batches = {n: s._inputs([s.prompt(q.text) + q.answer + s.end_of_turn], [q.image_path]) for n, s in scorers.items()}

    def step(name):
        with torch.no_grad():
            scorers[name].model(**batches[name])

    wall, _ = interleaved(step, list(scorers), reps, cpu=True)
    return {**{n: dict(costs[n], forward_s=wall[n], image_size=image_size) for n in scorers},
            **{n: dict(refused=why, image_size=image_size) for n, why in refused.items()}}


def markdown(costs: dict, names: list) -> str:
    """costs: {size: latency(...)} -> a table, one column per export."""
    rows = (("inference GFLOPs per sample", lambda c: f"{c['counted_gflops']:.2f}"),
            ("visual tokens", lambda c: f"{c['visual_tokens']} ({'yes' if c['visual_in_sequence'] else 'no'})"),
            ("LLM sequence", lambda c: str(c["tokens"])),
            ("one forward", lambda c: f"{1000 * c['forward_s']:.1f}"))
    units = {"visual tokens": " (in the LLM's sequence?)", "LLM sequence": " (tokens)", "one forward": " (ms)"}
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for size, by_name in costs.items():
        for label, fmt in rows:
            cells = ("-" if "refused" in by_name[n] else fmt(by_name[n]) for n in names)
            lines.append(f"| {label}, {size} px{units.get(label, '')} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"At {size} px {n} could not run: `{by_name[n]['refused']}`."
              for size, by_name in costs.items() for n in names if "refused" in by_name[n]]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exports", nargs="+", metavar="NAME=PATH", help="an export folder (python -m megatron_ext.export)")
    ap.add_argument("--sizes", default="160,320", help="image sides in pixels (default 160,320)")
    ap.add_argument("--out", help="also write cost.json and cost.md here")
    args = ap.parse_args(argv)
    exports = {}
    for item in args.exports:
        name, sep, path = item.partition("=")
        if not sep or not name or not (Path(path) / "config.json").is_file():
            ap.error(f"{item!r}: pass NAME=PATH with PATH an export folder holding config.json")
        exports[name] = path
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        ap.error(f"--sizes {args.sizes}: comma-separated pixel sizes, e.g. 160,320")
    started, loads = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), [machine_load()]
    costs = {str(s): latency(exports, s) for s in sizes}
    loads.append(machine_load())
    head = (f"`python -m bench.inference_cost {' '.join(sys.argv[1:] if argv is None else argv)}`, {started} on "
            f"{machine()}. Machine load before and after: {'; '.join(loads)}.\n\n")
    page = head + markdown(costs, list(exports))
    print(page)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cost.json").write_text(json.dumps(dict(started=started, loads=loads, exports=exports, costs=costs), indent=2))
        (out / "cost.md").write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
