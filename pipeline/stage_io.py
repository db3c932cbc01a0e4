"""Where each stage reads and writes, and which uids it must account for."""
from __future__ import annotations

import glob
import json
import os

import pandas as pd

from pipeline import accounting
from pipeline.config import ConfigError
from pipeline.fsio import list_shards, write_bytes_atomic

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


def stage_frames(cfg, through: str = "shard") -> list:
    """[(stage name, decisions)] for the stages this config runs, in order, up to `through`."""
    names = [("input", INPUT), ("download", DOWNLOAD)]
    if cfg.recaption.enabled:
        names.append(("recaption", RECAPTION))
    names += [("filter", FILTER), ("shard", SHARD)]
    names = names[:[n for n, _ in names].index(through) + 1]
    return [(n, accounting.read([os.path.join(cfg.stage_dir(d), "decisions.parquet")])) for n, d in names]


def settings(cfg, section: str, ignore=()) -> dict:
    """The settings of one config section that change what its stage writes."""
    return {k: v for k, v in cfg.to_dict()[section].items() if k not in ignore}


def guard_settings(stage_dir: str, stage: str, payload: dict) -> None:
    """One stage directory holds the output of one set of settings: resuming with other settings
    would mix them silently, so it is refused with the keys that differ."""
    # not *.json: img2dataset counts every *.json in its output folder as a finished shard
    path = os.path.join(stage_dir, "stage_settings.txt")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != payload:
            changed = sorted(k for k in set(old) | set(payload) if old.get(k) != payload.get(k))
            raise ConfigError(f"{stage_dir} holds {stage} output made with other settings (changed: {changed}); "
                              f"use a new output_dir, or delete {stage_dir} to redo {stage}")
        return
    os.makedirs(stage_dir, exist_ok=True)
    write_bytes_atomic(path, json.dumps(payload, sort_keys=True, indent=1).encode())
