"""Where an export writes: never into a folder that holds anything unless --overwrite, and never
deleting a file an export did not write. Files go to a staging folder beside the target first
(huggingface_hub's shard writer removes other model-*.safetensors in the folder it writes to), then
move in; `.paramvision_export.json` lists what the export wrote, so a later --overwrite export
removes only its own stale shards."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pvcommon.errors import UsageError

MANIFEST = ".paramvision_export.json"


def check_target(out_dir: str | Path, overwrite: bool = False) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder to write the export into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty; pass an empty or new folder, or --overwrite to "
                         f"replace the files an export writes there (other files are kept)")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ExportTarget:
    """target = ExportTarget(out, overwrite); write into target.staging; target.commit() -> out."""

    def __init__(self, out_dir: str | Path, overwrite: bool = False):
        self.out = check_target(out_dir, overwrite).resolve()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.out.name}.partial-"
        for old in self.out.parent.glob(prefix + "*"):  # a killed export's staging folder
            pid = old.name[len(prefix):]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        self.staging = self.out.parent / f"{prefix}{os.getpid()}"
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir()

    def commit(self) -> Path:
        """Move the staged files in; remove files a previous export listed and this one did not write."""
        written = sorted(p.name for p in self.staging.iterdir())
        self.out.mkdir(exist_ok=True)
        previous = self.out / MANIFEST
        stale = []
        if previous.is_file():
            try:
                stale = [n for n in json.loads(previous.read_text()).get("files", []) if n not in written]
            except ValueError:
                stale = []
        for name in written:
            os.replace(self.staging / name, self.out / name)
        for name in stale:
            p = self.out / name
            if p.is_file() and "/" not in name:
                p.unlink()
        (self.out / MANIFEST).write_text(json.dumps({"files": written}, indent=1))
        self.staging.rmdir()
        return self.out
