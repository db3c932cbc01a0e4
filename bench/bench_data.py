"""Data-pipeline benchmark on this machine (not a test).

1. Download: pipeline/download.py vs plain img2dataset on the same URL list and settings
   (goal: pipeline / plain <= 1.1). Runs alternate, best of --repeats each.
2. Samples/s per stage for a full run (download, recaption with the tiny CPU captioner, filter, shard).

    .venv/bin/python bench/bench_data.py --n 300 --repeats 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def url_list(path: str, base: str, rows) -> int:
    import pandas as pd

    keep = [(base + p, alt.decode()) for p, alt, why in rows if why not in ("caption_not_utf8", "invalid_url")]
    pd.DataFrame(keep, columns=["url", "caption"]).to_parquet(path)
    return len(keep)


def plain_img2dataset(urls: str, out: str, d) -> float:
    from img2dataset import download

    t = time.perf_counter()
    download(url_list=urls, input_format="parquet", url_col="url", caption_col="caption", output_folder=out,
             output_format="webdataset", encode_format="jpg", encode_quality=d.encode_quality,
             image_size=d.image_size, resize_mode=d.resize_mode, resize_only_if_bigger=d.resize_only_if_bigger,
             min_image_size=d.min_image_size, max_image_area=d.max_image_area, max_aspect_ratio=d.max_aspect_ratio,
             number_sample_per_shard=d.samples_per_shard, processes_count=d.processes, thread_count=d.threads,
             timeout=d.timeout, retries=d.retries, distributor="multiprocessing", enable_wandb=False,
             extract_exif=False, compute_hash="sha256")
    return time.perf_counter() - t


def pipeline_download(cfg) -> float:
    from pipeline import download

    t = time.perf_counter()
    download.run(cfg)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="good images in the synthetic corpus")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args()

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
        plain, ours = [], []
        for r in range(a.repeats):
            out = os.path.join(work, f"plain{r}")
            plain.append(plain_img2dataset(base_cfg["input"], out, from_dict(dict(base_cfg, output_dir=out,
                                                                                 recaption={"enabled": False})).download))
            cfg = from_dict(dict(base_cfg, output_dir=os.path.join(work, f"ours{r}"), recaption={"enabled": False}))
            ours.append(pipeline_download(cfg))
        cfg = from_dict(dict(base_cfg, output_dir=os.path.join(work, "full")))
        summary = run_mod.run(cfg)
    rows_out = [("plain img2dataset", min(plain)), ("pipeline/download.py", min(ours))]
    print(f"\n== download: {n_urls} URLs from 127.0.0.1, 2 processes x 16 threads, best of {a.repeats} ==")
    for name, s in rows_out:
        print(f"{name:<24} {s:7.2f} s  {n_urls / s:7.1f} URLs/s")
    print(f"{'ratio pipeline/plain':<24} {min(ours) / min(plain):7.3f}x   (goal <= 1.1x)  all runs: plain "
          f"{[round(x, 2) for x in plain]} pipeline {[round(x, 2) for x in ours]}")
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
