"""Write the easy-VQA test subset the local lmms-eval task reads (bench/lmms_eval/easyvqa_data/
test.jsonl): the first N test questions in the order `python -m megatron_ext.evaluate --limit N`
takes them, so both scores are of the same questions. Images stay in the installed easy-vqa
package and are referenced by id.

    python bench/lmms_eval/write_easyvqa_subset.py --limit 500
"""

import argparse
import json
from pathlib import Path

from megatron_ext.evaluate.vqa import heldout_questions

OUT = Path(__file__).resolve().parent / "easyvqa_data" / "test.jsonl"

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=500)
    args = ap.parse_args()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w") as f:
        for i, q in enumerate(heldout_questions(args.limit)):
            f.write(json.dumps({"index": i, "question": q.text, "answer": q.answer, "image_id": q.image_id}) + "\n")
    print(f"wrote {args.limit} questions to {OUT}")
