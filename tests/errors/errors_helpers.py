"""What every user-mistake case checks: the exit code, that the last line of stderr is the one
line (and no traceback), and that no file that existed before the call changed."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def snapshot(*dirs) -> dict:
    """{path: sha256} of every file under `dirs` (what a failed call must leave alone)."""
    out = {}
    for d in dirs:
        for root, _, files in os.walk(d):
            for name in files:
                p = os.path.join(root, name)
                out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def changed(before: dict) -> list:
    return [p for p, h in before.items()
            if not os.path.exists(p) or hashlib.sha256(Path(p).read_bytes()).hexdigest() != h]


def assert_one_line(code, stderr: str, want_code: int, want_line: str) -> str:
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    assert code == want_code, (code, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines and want_line in lines[-1], (want_line, lines[-3:])
    return lines[-1]


def run_py(args, timeout=300, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


class LockHolder:
    """Another process holding `path`'s run lock (pvcommon/runlock.py) until the block ends."""

    def __init__(self, path):
        self.path = str(path)

    def __enter__(self):
        self.proc = subprocess.Popen([PY, "-c", (
            "import sys, time; sys.path.insert(0, sys.argv[1]); from pvcommon.runlock import lock_run_dir; "
            "lock_run_dir(sys.argv[2]); print('locked', flush=True); time.sleep(120)"), str(ROOT), self.path],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        return self.proc

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
