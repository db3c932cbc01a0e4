"""Data-pipeline benchmark on this machine (not a test).

1. Download: pipeline/download.py vs plain img2dataset on the same URL list and settings
   (goal: pipeline / plain <= 1.1). Runs alternate, best of --repeats each.
2. Samples/s per stage for a full run (download, recaption with the tiny CPU captioner, filter, shard).

    .venv/bin/python -m bench.bench_data --n 300 --repeats 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def url_list(path: str, base: str, rows) -> int:
    import pandas as pd

    keep = [(base + p, alt.decode()) for p, alt, why in rows if why not in ("caption_not_utf8", "invalid_url")]
    pd.DataFrame(keep, columns=["url", "caption"]).to_parquet(path)
    return len(keep)


def plain_img2dataset(urls: str, out: str, d) -> None:
    from img2dataset import download

    download(url_list=urls, input_format="parquet", url_col="url", caption_col="caption", output_folder=out,
             output_format="webdataset", encode_format="jpg", encode_quality=d.encode_quality,
             image_size=d.image_size, resize_mode=d.resize_mode, resize_only_if_bigger=d.resize_only_if_bigger,
             min_image_size=d.min_image_size, max_image_area=d.max_image_area, max_aspect_ratio=d.max_aspect_ratio,
             number_sample_per_shard=d.samples_per_shard, processes_count=d.processes, thread_count=d.threads,
             timeout=d.timeout, retries=d.retries, distributor="multiprocessing", enable_wandb=False,
             extract_exif=False, compute_hash="sha256")


def one_download(kind: str, cfg_json: str) -> None:
    """Child process: one download, plain or through the pipeline, nothing else."""
    import json

    from pipeline.config import from_dict

    cfg = from_dict(json.loads(cfg_json))
    if kind == "plain":
        plain_img2dataset(cfg.input, cfg.output_dir, cfg.download)
    else:
        from pipeline import download
        download.run(cfg)


def timed_child(kind: str, cfg: dict) -> tuple:
    """-> (wall s, CPU s of the child and all its workers): each run in a fresh process, so
    neither pays the other's imports; CPU time is the overhead measure that the other
    processes on a shared machine disturb least."""
    import json
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # `-m` finds bench/ from here
    subprocess.run([sys.executable, "-m", "bench.bench_data", "--child", kind, json.dumps(cfg)], check=True,
                   cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="good images in the synthetic corpus")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return one_download(*a.child)

    import logging

    from pipeline import run as run_mod
    from pipeline.config import from_dict
    from pipeline.demo_data import Server, build_corpus
    from recaption.tiny import build_tiny_captioner

    logging.basicConfig(level=logging.WARNING)
    work = tempfile.mkdtemp(prefix="bench_data_")
    files, rows = build_corpus(n_good=a.n)
    model = build_tiny_captioner(os.path.join(work, "tiny"))
    base_cfg = {"output_dir": "", "input": os.path.join(work, "urls.parquet"), "ray": {"num_cpus": 2},
                "download": {"image_size": 384, "min_image_size": 16, "max_image_area": 16_000_000,
                             "samples_per_shard": 100, "processes": 2, "threads": 16},
                "recaption": {"model": model, "batch_size": 8, "max_new_tokens": 16, "max_pixels": 12544},
                "filter": {"min_script_ratio": None, "max_repeated_ngram_share": None, "caption_min_words": 1},
                "shard": {"samples_per_shard": 50}, "report": {"enabled": True}}
    with Server(files) as server:
        n_urls = url_list(base_cfg["input"], server.url, rows)
        runs = {"plain": [], "pipeline": []}
        for r in range(a.repeats):
            for kind in (("plain", "pipeline") if r % 2 == 0 else ("pipeline", "plain")):  # alternate order
                cfg = dict(base_cfg, output_dir=os.path.join(work, f"{kind}{r}"), recaption={"enabled": False})
                runs[kind].append(timed_child(kind, cfg))
        cfg = from_dict(dict(base_cfg, output_dir=os.path.join(work, "full")))
        summary = run_mod.run(cfg)
    print(f"\n== download: {n_urls} URLs from 127.0.0.1, 2 processes x 16 threads, {a.repeats} runs each, "
          f"each in a fresh process ==")
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in runs.items()}
    print(f"{'':<24} {'wall s (best)':>14} {'CPU s (best)':>13} {'URLs/s':>8}")
    for name, (w, c) in best.items():
        print(f"{name:<24} {w:14.2f} {c:13.2f} {n_urls / w:8.1f}")
    print(f"{'ratio pipeline/plain':<24} {best['pipeline'][0] / best['plain'][0]:13.3f}x {best['pipeline'][1] / best['plain'][1]:12.3f}x"
          f"   (goal <= 1.1x)")
    print("all runs (wall, CPU):", {k: [(round(w, 1), round(c, 1)) for w, c in v] for k, v in runs.items()})
    print("\n== full run, samples/s per stage (stage wall time incl. start-up) ==")
    for stage, seconds in summary["seconds"].items():
        n = summary["by_stage"][stage]["received"] if stage in summary["by_stage"] else n_urls
        print(f"{stage:<10} {n:6d} samples {seconds:8.2f} s {n / seconds:8.1f} samples/s")
    print(f"kept {summary['kept']} of {summary['input']}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("work dir:", work)


if __name__ == "__main__":  # img2dataset spawns workers
    main()
