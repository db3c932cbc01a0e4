"""Step 1-2: a synthetic web served on 127.0.0.1 (easy-VQA's train images, each with an alt-text
from its own questions and its question-answer pairs; generated images; the hostile cases), pulled
through the Ray data pipeline: img2dataset download, recaption with the tiny captioner, filter,
webdataset shards (pipeline/run.py with configs/data/demo_tiny.yaml; the qa column travels as an
extra column, so S3 instruction-tunes on each image's own pairs)."""

from __future__ import annotations

import json
import logging
import random
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
    """-> (files, rows, qa) the main job serves (pipeline.demo_data), yes/no answers balanced per
    question template when size.balance_yes_no."""
    from pipeline.demo_data import add_easyvqa, build_corpus

    files, rows = build_corpus(size.good_images)
    qa = add_easyvqa(files, rows, size.easyvqa_images)
    if size.balance_yes_no:
        pairs = balance_yes_no({path: json.loads(v) for path, v in qa.items()})
        qa = {path: json.dumps(p) for path, p in pairs.items()}
    return files, rows, qa


def template(question: str) -> str:
    """'is there a red shape?' -> 'is there a <colour> shape?': the question with what it asks
    about left out, so that one template's answers depend on the image alone."""
    from megatron_ext.data import easyvqa

    def word(w):
        bare = w.rstrip("?")
        tail = w[len(bare):]
        if bare in easyvqa.colours():
            return "<colour>" + tail
        return ("<shape>" + tail) if bare in easyvqa.SHAPES else w
    return " ".join(word(w) for w in question.split())


def balance_yes_no(qa: dict, seed: int = 0) -> dict:
    """{image: [[question, answer], ...]} with, for every question template, as many 'yes' as
    'no' pairs: the minority answer's pairs are all kept, the majority's subsampled (seeded).
    easy-VQA asks 'is there a <colour> shape?' about a random colour, so 'no' is right 87% of the
    time from the words alone: trained on that, every method answers the prior (docs/RESULTS.md).
    Open questions (which shape, which colour) are kept unchanged."""
    groups: dict = {}
    for path, pairs in qa.items():
        for i, (q, a) in enumerate(pairs):
            if a in ("yes", "no"):
                groups.setdefault(template(q), {"yes": [], "no": []})[a].append((path, i))
    rng = random.Random(seed)
    drop = set()
    for answers in groups.values():
        keep = min(len(answers["yes"]), len(answers["no"]))
        for refs in answers.values():
            drop.update(rng.sample(refs, len(refs) - keep))
    return {path: [p for i, p in enumerate(pairs) if (path, i) not in drop] for path, pairs in qa.items()}


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
