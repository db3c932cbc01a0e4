"""Where each stage reads and writes, and which uids it must account for."""
from __future__ import annotations

import glob
import os

import pandas as pd

from pipeline import accounting
from pipeline.fsio import list_shards

INPUT, DOWNLOAD, RECAPTION, FILTER, SHARD = "00_input", "10_download", "20_recaption", "30_filter", "40_shards"


def finished_shards(directory: str) -> list:
    """Shards img2dataset finished (without .tar): it writes <shard>_stats.json last."""
    done = []
    for stats in sorted(glob.glob(os.path.join(directory, "*_stats.json"))):
        shard = stats[: -len("_stats.json")]
        if os.path.exists(shard + ".tar") and os.path.exists(shard + ".parquet"):
            done.append(shard)
    return done


def source_shards(cfg, stage: str) -> list:
    """Finished input shards of `stage` (recaption and filter read the stage before them)."""
    if stage == "recaption" or (stage == "filter" and not cfg.recaption.enabled):
        return [s + ".tar" for s in finished_shards(cfg.stage_dir(DOWNLOAD))]
    if stage == "filter":
        return list_shards(cfg.stage_dir(RECAPTION))
    raise ValueError(stage)


def previous_decisions(cfg, stage: str) -> pd.DataFrame:
    prev = {"recaption": DOWNLOAD, "filter": RECAPTION if cfg.recaption.enabled else DOWNLOAD,
            "shard": FILTER}[stage]
    path = os.path.join(cfg.stage_dir(prev), "decisions.parquet")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{stage} needs the output of the stage before it: {path} is missing "
                                f"(run pipeline/run.py, or that stage first)")
    return accounting.read([path])


def stage_frames(cfg) -> list:
    """[(stage name, decisions)] for the stages this config runs, in order."""
    names = [("input", INPUT), ("download", DOWNLOAD)]
    if cfg.recaption.enabled:
        names.append(("recaption", RECAPTION))
    names += [("filter", FILTER), ("shard", SHARD)]
    return [(n, accounting.read([os.path.join(cfg.stage_dir(d), "decisions.parquet")])) for n, d in names]
