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

log = logging.getLogger(__name__)
# SigLIP/CLIP-style normalisation; a vision tower with other statistics passes its own
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


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


def tower_pixel_stats(tower_dir) -> tuple[tuple, tuple]:
    """(mean, std) of a vision tower's image processor (its directory's preprocessor_config.json);
    mean = std = 0.5 where it has none."""
    path = Path(tower_dir) / "preprocessor_config.json"
    stats = json.loads(path.read_text()) if path.is_file() else {}
    return tuple(stats.get("image_mean", MEAN)), tuple(stats.get("image_std", STD))


def decode_image(data: bytes, size: int, mean=MEAN, std=STD) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB").resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1)
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class ShardDataset:
    def __init__(self, manifest: str, tokenizer, prompt: str, seq_length: int, image_size: int,
                 image_tokens: int = 0, mean=MEAN, std=STD):
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
            self.items += [(tar, fields) for _, fields in members]
        if not self.items:
            from pvcommon.errors import DataError
            raise DataError(f"data.manifest={manifest}: none of its {len(m['shards'])} shards is readable, "
                            f"e.g. {self.unreadable[0][0] if self.unreadable else '-'}; rerun pipeline/shard.py")
        self.tok, self.prompt, self.seq, self.size = tokenizer, prompt, seq_length, image_size
        self.image_tokens = image_tokens  # VoRA: image placeholders before the text
        log.info("shards: %d samples in %d tars from %s", len(self.items), len(m["shards"]), manifest)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        tar, fields = self.items[i]
        image_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in fields), None)
        if image_ext is None or "txt" not in fields:
            return None
        with open(tar, "rb") as f:
            def read(ext):
                off, size = fields[ext]
                f.seek(off)
                return f.read(size)
            image, text = read(image_ext), read("txt")
        try:
            pixels = decode_image(image, self.size, self.mean, self.std)
            caption = text.decode("utf-8").strip()
        except Exception as e:  # PIL raises many types for broken files
            log.debug("corrupt sample %d in %s: %s", i, tar, e)
            return None
        if not caption:
            return None
        sample = encode_pair(self.tok, self.prompt, caption, self.seq, self.image_tokens)
        sample["pixel_values"] = pixels
        return sample
