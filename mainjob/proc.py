"""Child processes of the main job: output streamed to the console (prefixed) and to a log file,
and a failure that names the log to read."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mainjob.settings import ROOT
from pvcommon.lifetime import child_dies_with_me


class StepFailed(RuntimeError):
    pass


def run(cmd: list, log_path: Path, tag: str, env: dict | None = None, echo: bool = True) -> float:
    """Run `cmd` in the repository root; returns its wall time in seconds."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    t0 = time.time()
    with open(log_path, "w") as log, subprocess.Popen(
            [str(c) for c in cmd], cwd=ROOT, env=child_env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace",
            preexec_fn=child_dies_with_me) as p:  # a killed main job stops its children
        log.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        for line in p.stdout:
            log.write(line)
            if echo:
                sys.stdout.write(f"[{tag}] {line}")
                sys.stdout.flush()
        code = p.wait()
    if code:
        raise StepFailed(f"{tag} failed (exit {code}); see {log_path}")
    return time.time() - t0
