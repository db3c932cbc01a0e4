"""Stage 4: the filter's kept samples, shuffled with a seed into training shards of a fixed size,
each with a DALI index; a manifest the training loader reads. Deterministic: the same inputs and
config give byte-identical shards, so a killed run resumes by skipping finished shards."""
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
from pipeline.config import PipelineConfig
from pipeline.dali_index import write_index
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


def _training_sample(s: dict, caption_source: str) -> dict:
    """`.txt` is the text the filter chose (caption_source); `.json` keeps both texts and the choice."""
    from pipeline.filter import training_text

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
    digest = hashlib.sha256(json.dumps([[int(u) for u in c.uid] for c in chunks] +
                                       [[str(t) for t in c.caption_source] for c in chunks] +
                                       [cfg.filter.text_field, cfg.recaption.enabled, cfg.shard.prefix]).encode())
    path = os.path.join(out, "plan.sha256")
    if os.path.exists(path) and open(path).read() == digest.hexdigest():
        return
    stale = glob.glob(os.path.join(out, f"{cfg.shard.prefix}-*.tar")) + glob.glob(os.path.join(out, f"{cfg.shard.prefix}-*.idx"))
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
    chunks, rest = plan(kept, sc.samples_per_shard, sc.seed, sc.drop_last)
    _forget_other_plans(out, chunks, cfg)
    sources = {shard_name(p): p for p in source_shards(cfg, "filter")}
    indexes, entries = {}, []
    done = 0
    for i, chunk in enumerate(tqdm(chunks, desc="shard: write", unit="shard")):
        name = f"{sc.prefix}-{i:06d}"
        tar, idx = os.path.join(out, name + ".tar"), os.path.join(out, name + ".idx")
        if os.path.exists(tar) and os.path.exists(idx):
            done += 1  # finished by an earlier run: both files are only ever renamed into place
        else:
            write_shard(chunk, sources, tar, indexes)
            write_index(tar, idx)
        entries.append({"tar": name + ".tar", "idx": name + ".idx", "samples": len(chunk)})
    log.info("shard: %d shards (%d from an earlier run), %d samples", len(chunks), done, len(kept) - len(rest))
    rows = [(int(u), "shard", accounting.PASS, "") for u in kept.uid if u not in set(rest.uid)]
    rows += [(int(u), "shard", accounting.DROP, "shard_remainder") for u in rest.uid]
    decisions = accounting.table(sorted(rows)).to_pandas()
    accounting.write(os.path.join(out, "decisions.parquet"), decisions.itertuples(index=False))
    manifest = {
        "format": "webdataset", "fields": {"jpg": "image", "txt": "training text", "json": "metadata (alt_text, caption, caption_source, ...)"},
        "shards": entries, "num_shards": len(entries), "num_samples": sum(e["samples"] for e in entries),
        "samples_per_shard": sc.samples_per_shard, "seed": sc.seed,
        "text_field": cfg.filter.text_field, "recaptioned": cfg.recaption.enabled,
        "caption_sources": {str(k): int(v) for k, v in kept[~kept.uid.isin(set(rest.uid))]
                            .caption_source.value_counts().sort_index().items()},
        "config_hash": cfg.hash("download", "recaption", "filter", "shard"),
    }
    write_bytes_atomic(os.path.join(out, "manifest.json"), json.dumps(manifest, indent=2).encode())
    return decisions


def main(argv=None):
    from pipeline.cli import stage_main
    stage_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
