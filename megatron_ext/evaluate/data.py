"""Evaluation data of any source as one list of samples: an image, its caption, optionally a label
and question-answer pairs. Three sources, read the same way afterwards:

  a pipeline manifest   held-out shards (validation_manifest.json) or any manifest.json: the
                        image, the training text (.txt) as the caption, the URL list's extra
                        columns from the .json (`label`, `qa`);
  a URL list            .csv or .parquet with url (http(s)://, file:// or a local path) and
                        caption columns, optionally label and qa;
  easyvqa               easy-VQA's test split (1,000 images, 9,673 questions), its alt-texts as
                        captions: one such data set, read from the package.

A qa value is a JSON list of [question, answer] or [question, answer, kind]; without a kind,
`kind_of` names it (yes/no for a yes or no answer, else open). For easy-VQA the kind follows from
the answer: shape, colour or yes/no."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from megatron_ext.data.easyvqa import SHAPES, alt_text, load_split
from megatron_ext.data.shards import index_tar

YES_NO = "yes/no"


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str


@dataclass
class Sample:
    key: int                     # position in the data set: shuffling keys images by it
    image: object                # a PIL image or a path
    caption: str = ""
    label: str | None = None
    qa: list = field(default_factory=list)


def kind_of(answer: str) -> str:
    return YES_NO if answer.strip().lower() in ("yes", "no") else "open"


def parse_qa(value, kind_fn=kind_of) -> list:
    pairs = json.loads(value) if isinstance(value, str) else (value or [])
    out = []
    for item in pairs:
        q, a = str(item[0]), str(item[1])
        out.append(QA(q, a, str(item[2]) if len(item) > 2 else kind_fn(a)))
    return out


def _pil(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def from_manifest(path: Path, label_col: str = "label") -> list:
    m = json.loads(path.read_text())
    if m.get("format") != "webdataset" or "shards" not in m:
        raise ValueError(f"--data {path}: not a pipeline manifest (pipeline/shard.py writes one)")
    samples = []
    for entry in m["shards"]:
        tar = path.parent / entry["tar"]
        with open(tar, "rb") as f:
            for _, fields in index_tar(tar):
                read = {ext: (f.seek(off), f.read(size))[1] for ext, (off, size) in fields.items()}
                image = next((read[e] for e in ("jpg", "jpeg", "png", "webp") if e in read), None)
                if image is None:
                    continue
                meta = json.loads(read["json"]) if "json" in read else {}
                label = meta.get(label_col)
                samples.append(Sample(len(samples), _pil(image), read.get("txt", b"").decode("utf-8").strip(),
                                      None if label in (None, "") else str(label), parse_qa(meta.get("qa"))))
    return samples


def _fetch(url: str) -> Image.Image:
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    with urllib.request.urlopen(url, timeout=30) as r:
        return _pil(r.read())


def from_url_list(path: Path, url_col: str = "url", caption_col: str = "caption",
                  label_col: str = "label") -> list:
    import pandas as pd

    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    if url_col not in table.columns:
        raise ValueError(f"--data {path}: no {url_col!r} column (columns: {list(table.columns)})")
    samples = []
    for row in table.to_dict("records"):
        label = row.get(label_col)
        samples.append(Sample(len(samples), _fetch(str(row[url_col])), str(row.get(caption_col) or ""),
                              None if label in (None, "") else str(label), parse_qa(row.get("qa"))))
    return samples


def easyvqa_kind(answer: str) -> str:
    return YES_NO if answer in ("yes", "no") else "shape" if answer in SHAPES else "colour"


def from_easyvqa() -> list:
    return [Sample(s.image_id, s.image_path, alt_text(s), None,
                   [QA(q, a, easyvqa_kind(a)) for q, a in s.pairs]) for s in load_split("test")]


def load(spec: str, url_col: str = "url", caption_col: str = "caption", label_col: str = "label") -> list:
    """--data: 'easyvqa', a manifest .json, or a URL list .csv / .parquet."""
    if spec == "easyvqa":
        return from_easyvqa()
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--data {spec}: no such file (give a manifest .json, a URL list .csv or "
                                f".parquet, or easyvqa)")
    if path.suffix == ".json":
        return from_manifest(path, label_col)
    if path.suffix in (".csv", ".parquet"):
        return from_url_list(path, url_col, caption_col, label_col)
    raise ValueError(f"--data {spec}: a manifest .json, a URL list .csv or .parquet, or easyvqa")
