"""Stage 4: the filter's kept samples, shuffled with a seed into training shards of a fixed size,
each with a DALI index; a manifest the training loader reads. With shard.validation, a seeded
held-out part of the kept samples goes into validation shards first (validation_manifest.json,
the same format; decisions.parquet's `split` column says which part each sample went to).
Deterministic: the same inputs and config give byte-identical shards, so a killed run resumes by
skipping finished shards."""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import sys

if __package__ in (None, ""):  # run as a script, also under `ray job submit --working-dir .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import accounting
from pipeline.cli import stage_main
from pipeline.config import ConfigError, PipelineConfig
from pipeline.dali_index import write_index
from pipeline.filter import training_text
from pipeline.fsio import read_at, remove_stale_temps, shard_name, tar_index, write_bytes_atomic, write_tar_atomic
from pipeline.samples import parse, sample_key
from pipeline.stage_io import FILTER, SHARD, previous_decisions, source_shards

log = logging.getLogger(__name__)


def plan(kept: pd.DataFrame, samples_per_shard: int, seed: int, drop_last: bool):
    """-> (list of per-shard DataFrames, DataFrame of samples left over by drop_last)."""
    order = kept.sort_values("uid").reset_index(drop=True)  # independent of how the filter listed them
    order = order.iloc[np.random.default_rng(seed).permutation(len(order))].reset_index(drop=True)
    n_full = len(order) // samples_per_shard
    cut = n_full * samples_per_shard if drop_last else len(order)
    chunks = [order.iloc[i:i + samples_per_shard] for i in range(0, cut, samples_per_shard)]
    return chunks, order.iloc[cut:]


TRAIN, VALIDATION = "train", "validation"  # decisions.parquet's `split` values
VALIDATION_MANIFEST = "validation_manifest.json"


def validation_count(n_kept: int, validation: float) -> int:
    """shard.validation as a number of samples: a fraction of n_kept (at least one) or a count."""
    if not validation:
        return 0
    n = max(1, round(validation * n_kept)) if validation < 1 else int(validation)
    if n >= n_kept:
        raise ValueError(f"shard.validation={validation} holds out {n} of {n_kept} kept samples and leaves "
                         f"none to train on; hold out fewer")
    return n


def hold_out(kept: pd.DataFrame, validation: float, seed: int) -> tuple:
    """-> (training samples, held-out samples): a seeded draw, independent of the listing order and
    of the training shards' own shuffle (another stream of the same seed)."""
    n = validation_count(len(kept), validation)
    order = kept.sort_values("uid").reset_index(drop=True)
    pick = np.zeros(len(order), dtype=bool)
    pick[np.random.default_rng([seed, 1]).permutation(len(order))[:n]] = True
    return order[~pick].reset_index(drop=True), order[pick].reset_index(drop=True)


def _training_sample(s: dict, caption_source: str) -> dict:
    """`.txt` is the text the filter chose (caption_source); `.json` keeps both texts and the choice."""
    meta = dict(s["meta"], uid=s["uid"], alt_text=s["alt_text"], caption_source=caption_source)
    text = training_text(s, caption_source)
    return {"jpg": s["image"], "txt": text.encode("utf-8"), "json": json.dumps(meta, sort_keys=True).encode()}


def write_shard(chunk: pd.DataFrame, sources: dict, path: str, indexes: dict) -> None:
    samples = []
    for uid, src, key, caption_source in zip(chunk.uid, chunk.shard, chunk.key, chunk.caption_source):
        tar = sources[src]
        if tar not in indexes:
            indexes[tar] = tar_index(tar)
        with open(tar, "rb") as f:
            fields = {ext: read_at(f, off, size) for ext, (off, size) in indexes[tar][key].items()}
        s = parse(key, fields)
        if s is None or s["uid"] != uid:
            raise RuntimeError(f"{tar}: member {key} no longer matches uid {uid}; re-run the filter stage")
        samples.append((sample_key(uid), _training_sample(s, caption_source)))
    write_tar_atomic(path, samples)


def _forget_other_plans(out: str, chunks: list, cfg: PipelineConfig) -> None:
    """Finished shards are reused only if they belong to this exact plan (samples, order, text);
    shards of another plan (new seed, new filter output) are deleted and rewritten (cheap)."""
    sc = cfg.shard
    digest = hashlib.sha256(json.dumps([[int(u) for u in c.uid] for c in chunks] +
                                       [[str(t) for t in c.caption_source] for c in chunks] +
                                       [cfg.filter.text_field, cfg.recaption.enabled, sc.prefix,
                                        sc.validation_prefix]).encode())
    path = os.path.join(out, "plan.sha256")
    if os.path.exists(path) and open(path).read() == digest.hexdigest():
        return
    stale = [p for prefix in (sc.prefix, sc.validation_prefix) for ext in ("tar", "idx")
             for p in glob.glob(os.path.join(out, f"{prefix}-*.{ext}"))]
    if stale:
        log.warning("shard: %d files in %s belong to another plan; rewriting them", len(stale), out)
    for p in stale:
        os.remove(p)
    write_bytes_atomic(path, digest.hexdigest().encode())


def run(cfg: PipelineConfig) -> pd.DataFrame:
    expected = previous_decisions(cfg, "shard")
    kept_path = os.path.join(cfg.stage_dir(FILTER), "kept.parquet")
    kept = pd.read_parquet(kept_path)
    if set(kept.uid) != accounting.passed(expected):
        raise accounting.AccountingError(f"{kept_path} disagrees with the filter's decisions; re-run the filter")
    sc, out = cfg.shard, cfg.stage_dir(SHARD)
    os.makedirs(out, exist_ok=True)
    remove_stale_temps(out)
    try:
        train, held_out = hold_out(kept, sc.validation, sc.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    chunks, rest = plan(train, sc.samples_per_shard, sc.seed, sc.drop_last)
    val_chunks, _ = plan(held_out, sc.samples_per_shard, sc.seed, drop_last=False)
    _forget_other_plans(out, chunks + val_chunks, cfg)
    sources = {shard_name(p): p for p in source_shards(cfg, "filter")}
    indexes = {}
    entries = _write_shards(chunks, sc.prefix, out, sources, indexes)
    val_entries = _write_shards(val_chunks, sc.validation_prefix, out, sources, indexes)
    log.info("shard: %d training shards, %d samples; %d validation shards, %d samples", len(chunks),
             len(train) - len(rest), len(val_chunks), len(held_out))
    dropped, validation = set(rest.uid), set(held_out.uid)
    rows = sorted([(int(u), "shard", accounting.DROP if u in dropped else accounting.PASS,
                    "shard_remainder" if u in dropped else "") for u in kept.uid])
    split = ["" if u in dropped else VALIDATION if u in validation else TRAIN for u, *_ in rows]
    accounting.write(os.path.join(out, "decisions.parquet"), rows, extra={"split": split})
    decisions = accounting.read([os.path.join(out, "decisions.parquet")])
    if val_entries:
        write_bytes_atomic(os.path.join(out, VALIDATION_MANIFEST), json.dumps(dict(
            _manifest(val_entries, cfg, held_out), split=VALIDATION), indent=2).encode())
    elif os.path.exists(os.path.join(out, VALIDATION_MANIFEST)):
        os.remove(os.path.join(out, VALIDATION_MANIFEST))  # of an earlier plan with a held-out split
    manifest = dict(_manifest(entries, cfg, train[~train.uid.isin(dropped)]), split=TRAIN,
                    validation_manifest=VALIDATION_MANIFEST if val_entries else None,
                    num_validation_samples=len(held_out))
    write_bytes_atomic(os.path.join(out, "manifest.json"), json.dumps(manifest, indent=2).encode())
    return decisions


def _write_shards(chunks: list, prefix: str, out: str, sources: dict, indexes: dict) -> list:
    entries, done = [], 0
    for i, chunk in enumerate(tqdm(chunks, desc=f"shard: write {prefix}", unit="shard")):
        name = f"{prefix}-{i:06d}"
        tar, idx = os.path.join(out, name + ".tar"), os.path.join(out, name + ".idx")
        if os.path.exists(tar) and os.path.exists(idx):
            done += 1  # finished by an earlier run: both files are only ever renamed into place
        else:
            write_shard(chunk, sources, tar, indexes)
            write_index(tar, idx)
        entries.append({"tar": name + ".tar", "idx": name + ".idx", "samples": len(chunk)})
    if done:
        log.info("shard: %d %s shards from an earlier run", done, prefix)
    return entries


def _manifest(entries: list, cfg: PipelineConfig, samples: pd.DataFrame) -> dict:
    sc = cfg.shard
    return {
        "format": "webdataset", "fields": {"jpg": "image", "txt": "training text", "json": "metadata (alt_text, caption, caption_source, ...)"},
        "shards": entries, "num_shards": len(entries), "num_samples": sum(e["samples"] for e in entries),
        "samples_per_shard": sc.samples_per_shard, "seed": sc.seed,
        "text_field": cfg.filter.text_field, "recaptioned": cfg.recaption.enabled,
        "caption_sources": {str(k): int(v) for k, v in samples.caption_source.value_counts().sort_index().items()},
        "extra_columns": list(cfg.extra_columns),
        "config_hash": cfg.hash("download", "recaption", "filter", "shard"),
    }


def main(argv=None):
    stage_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
