"""easy-VQA (PyPI easy-vqa 1.0, MIT): 64 x 64 PNGs of one coloured shape each, with question-answer
pairs over 13 answers. The one place the package's files are read: the main job serves the train
split through the data pipeline, the evaluation scores the test split. The test split never enters
training (tests/pipeline/test_pipeline_easyvqa.py checks the shards)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SPLITS = ("train", "test")
SHAPES = ("circle", "rectangle", "triangle")


@dataclass(frozen=True)
class Sample:
    image_id: int
    image_path: str
    questions: tuple
    answers: tuple

    @property
    def pairs(self) -> list:
        return list(zip(self.questions, self.answers))


def data_dir() -> Path:
    try:
        import easy_vqa
    except ImportError as e:
        raise ImportError("easy-VQA is not installed: pip install -c .venv/constraints.txt easy-vqa==1.0 "
                          "(the data extra of pyproject.toml)") from e
    return Path(easy_vqa.__file__).parent / "data"


def _check(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"easy-VQA split {split!r}: use one of {SPLITS}")


@lru_cache(maxsize=None)
def _load(split: str) -> tuple:
    _check(split)
    root = data_dir() / split
    by_image: dict = {}
    for question, answer, image_id in json.loads((root / "questions.json").read_text()):
        by_image.setdefault(int(image_id), []).append((question, answer))
    out = []
    for image_id in sorted(by_image):
        path = root / "images" / f"{image_id}.png"
        if not path.is_file():
            raise FileNotFoundError(f"easy-VQA {split}: {path} is missing (reinstall easy-vqa==1.0)")
        qs, ans = zip(*by_image[image_id])
        out.append(Sample(image_id, str(path), tuple(qs), tuple(ans)))
    return tuple(out)


def load_split(split: str) -> list:
    """-> [Sample] in image-id order: 4,000 train images (38,575 pairs), 1,000 test (9,673)."""
    return list(_load(split))


@lru_cache(maxsize=None)
def answers() -> tuple:
    """The 13 answers, in the package's order (answers.txt)."""
    lines = (data_dir() / "answers.txt").read_text().splitlines()
    return tuple(a.strip() for a in lines if a.strip())


def colours() -> tuple:
    return tuple(a for a in answers() if a not in SHAPES + ("yes", "no"))


def colour_and_shape(sample: Sample) -> tuple:
    """(colour, shape) as far as the image's own questions tell: 'what color is the shape?' -> the
    colour, 'what color is the circle?' also names the shape, 'is there a red shape?' -> yes names the
    colour, and 'no' answers rule values out until one is left. None where the questions leave it
    open (a few images are asked only negative questions)."""
    cs = colours()
    known = {"colour": set(), "shape": set()}
    ruled_out = {"colour": set(), "shape": set()}
    for q, a in sample.pairs:
        words = q.rstrip("?").split()
        named = {"colour": {w for w in words if w in cs}, "shape": {w for w in words if w in SHAPES}}
        if a in cs or a in SHAPES:
            known["colour" if a in cs else "shape"].add(a)
            for kind in known:
                known[kind] |= named[kind]
        elif a in ("yes", "no"):
            holds = (a == "yes") != ("not" in words or "no" in words)  # the statement without negation
            for kind in known:
                (known if holds else ruled_out)[kind] |= named[kind]
    out = []
    for kind, values in (("colour", cs), ("shape", SHAPES)):
        left = known[kind] or (set(values) - ruled_out[kind])
        if len(known[kind]) > 1:
            raise ValueError(f"easy-VQA image {sample.image_id}: its answers name two {kind}s {sorted(known[kind])}")
        out.append(next(iter(left)) if len(left) == 1 else None)
    return tuple(out)


def alt_text(sample: Sample) -> str:
    """'a red triangle': the web-style alt-text the main job serves the image with; what the
    questions leave open is left out ('a circle', 'a red shape'), as a real alt-text would."""
    colour, shape = colour_and_shape(sample)
    return " ".join(w for w in ("a", colour, shape or "shape") if w)
