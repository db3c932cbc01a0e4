"""Functions of the local easy-VQA lmms-eval task (easyvqa_local.yaml). The answer is scored as
`python -m megatron_ext.evaluate` scores its greedy answers: the same normalisation, imported from
the project (its vqa module needs only the standard library)."""

import sys
from functools import lru_cache
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from megatron_ext.evaluate.vqa import normalize  # noqa: E402


@lru_cache(maxsize=1)
def _image_paths() -> dict:
    from easy_vqa import get_test_image_paths

    return get_test_image_paths()


def doc_to_visual(doc):
    with Image.open(_image_paths()[int(doc["image_id"])]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_messages(doc, lmms_eval_specific_kwargs=None):
    return [{"role": "user", "content": [{"type": "image", "url": doc_to_visual(doc)[0]},
                                         {"type": "text", "text": doc_to_text(doc)}]}]


def process_results(doc, results):
    return {"exact_match": float(normalize(results[0]) == normalize(doc["answer"]))}
