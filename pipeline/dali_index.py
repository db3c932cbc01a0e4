"""DALI webdataset index files (the format of DALI's tools/wds2idx.py, v1.2), written without DALI:
first line `v1.2 <samples>`, then one line per sample of `<ext> <data offset> <size> <member name>`
groups, one group per component, in tar order."""
from __future__ import annotations

import tarfile

from pipeline.fsio import atomic_path

VERSION = "v1.2"


def index_lines(tar_path: str) -> list:
    samples, last = [], None
    with tarfile.open(tar_path, "r:") as tar:
        for m in tar:
            if not m.isreg():
                continue
            base = m.name.rsplit("/", 1)[-1]
            dot = m.name.find(".", m.name.rfind("/") + 1)
            if dot <= 0 or not base or base.startswith("."):
                continue  # DALI skips hidden/extension-less members too
            key, ext = m.name[:dot], m.name[dot + 1:]
            part = f"{ext} {m.offset_data} {m.size} {m.name}"
            if key != last:
                samples.append([part])
                last = key
            else:
                samples[-1].append(part)
    if not samples:
        raise ValueError(f"{tar_path}: empty webdataset shard, DALI cannot index it")
    return [f"{VERSION} {len(samples)}"] + [" ".join(s) for s in samples]


def write_index(tar_path: str, idx_path: str) -> None:
    with atomic_path(idx_path) as tmp, open(tmp, "w") as f:
        f.write("\n".join(index_lines(tar_path)) + "\n")
