"""Files: atomic writes, deterministic tar shards, and tar reading that never trusts member names."""
from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import tarfile
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_SAFE_EXT = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temp path beside `path`; rename onto it only if the block finishes.

    A SIGKILL leaves at most a `.tmp-*` file, which readers ignore and the next run overwrites."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_parquet_atomic(path: str, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def check_key(key: str) -> str:
    """Sample keys become tar member names: refuse anything that is not a plain token."""
    if not _SAFE_KEY.match(key):
        raise ValueError(f"unsafe sample key {key!r}")
    return key


def write_tar_atomic(path: str, samples: List[Tuple[str, Dict[str, bytes]]]) -> None:
    """Write (key, {ext: bytes}) samples as a webdataset tar, byte-identical for identical input.

    Fixed mtime/uid/names and sorted extensions, so a resumed run reproduces the same bytes."""
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, fields in samples:
                check_key(key)
                for ext in sorted(fields):
                    if not _SAFE_EXT.match(ext):
                        raise ValueError(f"unsafe extension {ext!r} for sample {key}")
                    data = fields[ext]
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    info.mtime = 0
                    info.mode = 0o644
                    info.uname = info.gname = "paramvision"
                    tar.addfile(info, io.BytesIO(data))


def split_member(name: str) -> Optional[Tuple[str, str]]:
    """`dir/key.ext` -> (key, ext) when safe, else None. Webdataset: key = name up to the first dot."""
    if name.startswith("/") or "\\" in name or any(p in ("..", "") for p in name.split("/")):
        return None
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        return None
    key, ext = base.split(".", 1)
    if not _SAFE_KEY.match(key) or not _SAFE_EXT.match(ext.lower()):
        return None
    return key, ext.lower()


def iter_tar(path: str) -> Iterator[Tuple[str, Dict[str, bytes], Optional[str]]]:
    """Yield (key, fields, problem) per sample in file order. Tar contents are never extracted to
    disk; members with unsafe names or that are not regular files come back as a `problem`."""
    current, fields = None, OrderedDict()
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            parsed = split_member(m.name)
            if parsed is None or not m.isreg():
                if current is not None:
                    yield current, dict(fields), None
                    current, fields = None, OrderedDict()
                yield m.name, {}, "unsafe_tar_member"
                continue
            key, ext = parsed
            if key != current:
                if current is not None:
                    yield current, dict(fields), None
                current, fields = key, OrderedDict()
            fields[ext] = tar.extractfile(m).read()
    if current is not None:
        yield current, dict(fields), None


def tar_index(path: str) -> Dict[str, Dict[str, Tuple[int, int]]]:
    """key -> {ext: (data offset, size)} for random access into a shard."""
    out: Dict[str, Dict[str, Tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            parsed = split_member(m.name)
            if parsed and m.isreg():
                out.setdefault(parsed[0], {})[parsed[1]] = (m.offset_data, m.size)
    return out


def read_at(f, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def remove_stale_temps(directory: str) -> int:
    """Temp files left by a killed writer: never read, removed when a stage starts again."""
    stale = glob.glob(os.path.join(directory, "*.tmp-*"))
    for p in stale:
        os.remove(p)
    return len(stale)


def list_shards(directory: str, pattern: str = "*.tar") -> List[str]:
    """Finished shards only: temp files of an interrupted writer never match."""
    return sorted(p for p in glob.glob(os.path.join(directory, pattern)) if ".tmp-" not in p)


def shard_name(path: str) -> str:
    return os.path.basename(path).split(".", 1)[0]
