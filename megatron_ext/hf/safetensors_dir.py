"""Lazy, sliced reads from a Hugging Face safetensors checkpoint directory.

Each rank reads only the rows/columns it holds (safetensors slices are memory-mapped), so a TP/PP
rank never materialises the full model."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import torch
from safetensors import safe_open


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file or tensor."""


class SafetensorsDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"checkpoint directory {self.path} does not exist")
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.file_of = {k: self.path / f for k, f in weight_map.items()}
        else:
            files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{self.path} has no *.safetensors files (nor an index)")
            self.file_of = {}
            for f in files:
                with safe_open(f, "pt") as h:
                    self.file_of.update({k: f for k in h.keys()})
        self._handles: dict = {}
        self.used: set = set()

    def __contains__(self, key: str) -> bool:
        return key in self.file_of

    def _slice(self, key: str):
        if key not in self.file_of:
            raise CheckpointError(f"tensor '{key}' is not in the checkpoint at {self.path}")
        f = self.file_of[key]
        if f not in self._handles:
            if not f.is_file():
                raise CheckpointError(f"{f} is listed in the index but missing")
            self._handles[f] = safe_open(f, "pt")
        self.used.add(key)
        return self._handles[f].get_slice(key)

    def shape(self, key: str) -> tuple:
        return tuple(self._slice(key).get_shape())

    def read(self, key: str, dim: int | None = None, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The tensor, or rows/columns [start:stop) along dim 0 or 1."""
        s = self._slice(key)
        if dim is None:
            return s[:]
        if dim == 0:
            return s[start:stop]
        return s[:, start:stop]


def make_readable(folder: str | Path) -> None:
    """Every file of an export 0644 like the rest: the safetensors writer leaves its shards 0600
    (a temporary file renamed into place), which other users and containers cannot read."""
    for f in Path(folder).iterdir():
        if f.is_file():
            os.chmod(f, os.stat(f).st_mode | stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
