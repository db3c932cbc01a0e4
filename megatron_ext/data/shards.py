"""The data pipeline's training shards (pipeline/shard.py) as an indexed dataset, decoded with PIL.

The manifest lists webdataset tars (members <key>.jpg, <key>.txt, <key>.json) next to it. Tar
headers are scanned once into (tar, offset, size) per member, so sample i is read directly: the
RankSampler's order and resume position apply unchanged (the same as the synthetic data). An
image that does not decode, or a sample missing its image or text, yields None: skipped and
counted by the loader.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import torch

from megatron_ext.data.text import encode_pair
from megatron_ext.hf.vision_tower import MEAN, STD
from pvcommon.errors import DataError

log = logging.getLogger(__name__)


def index_tar(path: Path) -> list[tuple[str, dict]]:
    """[(sample key, {extension: (data offset, size)})] in tar order."""
    samples, order = {}, []
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if not m.isfile():
                continue
            name = m.name.rsplit("/", 1)[-1]
            key, _, ext = name.partition(".")
            if key not in samples:
                samples[key] = {}
                order.append(key)
            samples[key][ext] = (m.offset_data, m.size)
    return [(k, samples[k]) for k in order]


def decode_image(data: bytes, size: int, mean=MEAN, std=STD) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB").resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1)
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


TASKS = ("caption", "qa")


def qa_pairs(meta: dict) -> list:
    """A sample's question-answer pairs: the `qa` column of its URL list (a JSON list of
    [question, answer]) that the data pipeline carried into its .json; [] without one."""
    qa = meta.get("qa") or "[]"
    pairs = json.loads(qa) if isinstance(qa, str) else qa
    return [(str(q), str(a)) for q, a in pairs]


def _read_member(tar: Path, fields: dict, ext: str) -> bytes:
    off, size = fields[ext]
    with open(tar, "rb") as f:
        f.seek(off)
        return f.read(size)


class ShardDataset:
    """task caption: one item per sample, its training text (`.txt`) after `prompt`. task qa: one
    item per question-answer pair of a sample (samples without pairs are left out): the question
    is the user turn, the answer the assistant turn that carries the loss."""

    def __init__(self, manifest: str, tokenizer, prompt: str, seq_length: int, image_size: int,
                 image_tokens: int = 0, mean=MEAN, std=STD, task: str = "caption"):
        if task not in TASKS:
            raise ValueError(f"data.task={task!r}: use one of {TASKS}")
        self.task = task
        self.mean, self.std = mean, std  # the vision tower's pixel statistics (data.loader.pixel_stats)
        self.manifest_path = Path(manifest)
        m = json.loads(self.manifest_path.read_text())
        if m.get("format") != "webdataset" or "shards" not in m:
            raise ValueError(f"{manifest}: not a training-shard manifest (pipeline/shard.py writes one)")
        root = self.manifest_path.parent
        self.items = []  # (tar path, member map)
        self.unreadable = []  # (tar, samples the manifest lists in it): skipped, named once
        for entry in m["shards"]:
            tar = root / entry["tar"]
            try:
                members = index_tar(tar)
            except (tarfile.TarError, OSError) as e:  # not a tar, cut in half, unreadable
                log.warning("%s: unreadable shard (%s); its %d samples are skipped", tar, e, entry["samples"])
                self.unreadable.append((str(tar), entry["samples"]))
                continue
            if len(members) != entry["samples"]:
                log.warning("%s: %d samples, the manifest says %d", tar, len(members), entry["samples"])
            if task == "caption":
                self.items += [(tar, fields, None) for _, fields in members]
            else:
                self.items += [(tar, fields, pair) for _, fields in members if "json" in fields
                               for pair in qa_pairs(json.loads(_read_member(tar, fields, "json")))]
        if not self.items and len(self.unreadable) == len(m["shards"]):
            raise DataError(f"data.manifest={manifest}: none of its {len(m['shards'])} shards is readable, "
                            f"e.g. {self.unreadable[0][0] if self.unreadable else '-'}; rerun pipeline/shard.py")
        if not self.items:
            raise DataError(f"data.manifest={manifest}: no {'question-answer pairs' if task == 'qa' else 'samples'} "
                            f"to train on (data.task={task}); the qa task needs a URL list with a qa "
                            f"column carried by the pipeline's extra_columns")
        self.tok, self.prompt, self.seq, self.size = tokenizer, prompt, seq_length, image_size
        self.image_tokens = image_tokens  # VoRA: image placeholders before the text
        log.info("shards: %d %s in %d tars from %s", len(self.items), "samples" if task == "caption" else
                 "question-answer pairs", len(m["shards"]), manifest)

    def __len__(self) -> int:
        return len(self.items)

    def image_key(self, i: int) -> tuple:
        """Which image item i shows (items of one sample's question-answer pairs share it)."""
        tar, fields, _ = self.items[i]
        return str(tar), min(fields.values())

    def __getitem__(self, i: int):
        tar, fields, pair = self.items[i]
        image_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in fields), None)
        if image_ext is None or (pair is None and "txt" not in fields):
            return None
        try:
            pixels = decode_image(_read_member(tar, fields, image_ext), self.size, self.mean, self.std)
            prompt, target = pair if pair else (self.prompt, _read_member(tar, fields, "txt").decode("utf-8").strip())
        except Exception as e:  # PIL raises many types for broken files
            log.debug("corrupt sample %d in %s: %s", i, tar, e)
            return None
        if not target:
            return None
        sample = encode_pair(self.tok, prompt, target, self.seq, self.image_tokens)
        sample["pixel_values"] = pixels
        return sample
