"""Step 1-2: a synthetic web served on 127.0.0.1 (easy-VQA's train images, each with an alt-text
from its own questions and its question-answer pairs; generated images; the hostile cases), pulled
through the Ray data pipeline: img2dataset download, recaption with the tiny captioner, filter,
webdataset shards (pipeline/run.py with configs/data/demo_tiny.yaml; the qa column travels as an
extra column, so S3 instruction-tunes on each image's own pairs)."""

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


def corpus(size: Size) -> tuple:
    """-> (files, rows, qa) the main job serves (pipeline.demo_data)."""
    from pipeline.demo_data import add_easyvqa, build_corpus

    files, rows = build_corpus(size.good_images)
    qa = add_easyvqa(files, rows, size.easyvqa_images)
    return files, rows, qa


def build(data: Path, size: Size, captioner: Path, echo: bool = True) -> dict:
    """Runs (or resumes) the data pipeline into `data` (shared by the methods: one corpus, three
    ways to train on it); returns its summary with 'manifest'.

    The URL list holds the server's port, so a resumed run serves on the same port (or, when that
    port is taken, starts the pipeline over: its stages resume per input list)."""
    from pipeline.demo_data import Server, write_url_list

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
    files, rows, qa = corpus(size)
    with Server(files, port) as server:
        port_file.write_text(str(server.httpd.server_address[1]))
        urls = data / "urls.csv"
        write_url_list(str(urls), server.url, rows, qa)
        log.info("serving %d files (%d URLs: %d easy-VQA train images, %d hostile) at %s", len(files), len(rows),
                 len(qa), sum(1 for r in rows if r[2]), server.url)
        sets = [f"input={urls}", f"output_dir={data / 'pipeline'}", f"recaption.model={captioner}",
                f"shard.samples_per_shard={size.samples_per_shard}", "extra_columns=[qa]"]
        cmd = [sys.executable, "pipeline/run.py", "--config", PIPELINE_CONFIG]
        for s in sets:
            cmd += ["--set", s]
        seconds = proc.run(cmd, data / "pipeline.log", "data", echo=echo)
    summary = json.loads(summary_file.read_text())
    if not manifest.is_file():
        raise proc.StepFailed(f"the data pipeline finished without {manifest}")
    return dict(summary, manifest=str(manifest), wall_s=round(seconds, 1), resumed=False)
