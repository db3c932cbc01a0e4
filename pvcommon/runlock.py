"""One run per run directory: an advisory lock (flock) held for the life of the process. The
kernel drops it when the holder dies, even by SIGKILL, so a stale lock never blocks a rerun, and a
second run on the same directory fails at once, naming the holder's pid."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pvcommon.errors import UsageError

LOCK_NAME = ".paramvision.lock"
_held: dict = {}  # path -> fd, kept open (and locked) until the process exits


def lock_run_dir(run_dir: str | Path, key: str = "run directory") -> Path:
    """Lock `run_dir` (created if missing) for this process; `key` is the setting that names it."""
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise UsageError(f"{key} {d} is a file; point {key} at a folder")
    d.mkdir(parents=True, exist_ok=True)
    path = (d / LOCK_NAME).resolve()
    if str(path) in _held:
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(f"{key} {d} is in use by another run (pid {holder}); wait for it to end, "
                         f"stop it, or choose another {key}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[str(path)] = fd
    return path


def release(run_dir: str | Path) -> None:
    fd = _held.pop(str((Path(run_dir) / LOCK_NAME).resolve()), None)
    if fd is not None:
        os.close(fd)
