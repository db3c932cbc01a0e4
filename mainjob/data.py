"""Step 1-2: a synthetic web (generated images with alt-texts, and hostile cases) served on
127.0.0.1, pulled through the Ray data pipeline: img2dataset download, recaption with the tiny
captioner, filter, webdataset shards (pipeline/run.py with configs/data/demo_tiny.yaml)."""

from __future__ import annotations

import json
import logging
import sys
import shutil
import socket
from pathlib import Path

from mainjob import proc
from mainjob.settings import ROOT, Size

log = logging.getLogger("mainjob.data")
PIPELINE_CONFIG = ROOT / "configs" / "data" / "demo_tiny.yaml"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def build(data: Path, size: Size, captioner: Path, echo: bool = True) -> dict:
    """Runs (or resumes) the data pipeline into `data` (shared by the methods: one corpus, three
    ways to train on it); returns its summary with 'manifest'.

    The URL list holds the server's port, so a resumed run serves on the same port (or, when that
    port is taken, starts the pipeline over: its stages resume per input list)."""
    from pipeline.demo_data import Server, build_corpus, write_url_list

    summary_file = data / "pipeline" / "summary.json"
    manifest = data / "pipeline" / "40_shards" / "manifest.json"
    if summary_file.is_file() and manifest.is_file():
        log.info("data pipeline already complete in %s", data)
        return dict(json.loads(summary_file.read_text()), manifest=str(manifest), seconds={}, resumed=True)
    port_file = data / "port"
    port = int(port_file.read_text()) if port_file.is_file() else 0
    if port and not _free(port):
        log.warning("port %d of the interrupted run is taken: starting the data pipeline over", port)
        shutil.rmtree(data)
        port = 0
    data.mkdir(parents=True, exist_ok=True)
    files, rows = build_corpus(size.good_images)
    with Server(files, port) as server:
        port_file.write_text(str(server.httpd.server_address[1]))
        urls = data / "urls.csv"
        write_url_list(str(urls), server.url, rows)
        log.info("serving %d files (%d URLs, %d of them hostile) at %s", len(files), len(rows),
                 sum(1 for r in rows if r[2]), server.url)
        sets = [f"input={urls}", f"output_dir={data / 'pipeline'}", f"recaption.model={captioner}",
                f"shard.samples_per_shard={size.samples_per_shard}"]
        cmd = [sys.executable, "pipeline/run.py", "--config", PIPELINE_CONFIG]
        for s in sets:
            cmd += ["--set", s]
        seconds = proc.run(cmd, data / "pipeline.log", "data", echo=echo)
    summary = json.loads(summary_file.read_text())
    if not manifest.is_file():
        raise proc.StepFailed(f"the data pipeline finished without {manifest}")
    return dict(summary, manifest=str(manifest), wall_s=round(seconds, 1), resumed=False)
