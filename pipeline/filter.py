"""Stage 3: per-sample filters (sizes, aspect ratio, caption length/language/degeneracy, optional
CLIP score) computed per shard in Ray tasks, then exact and near-duplicate removal in one
deterministic pass over all shards (first occurrence in shard order wins)."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import warnings

if __package__ in (None, ""):  # run as a script, also under `ray job submit --working-dir .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from pipeline import accounting
from pipeline.cli import stage_main
from pipeline.clip_score import ClipScorer
from pipeline.config import PipelineConfig
from pipeline.dedup import Deduper
from pipeline.fsio import iter_tar, shard_name, write_parquet_atomic
from pipeline.ray_setup import init_ray
from pipeline.samples import parse
from pipeline.stage_io import FILTER, previous_decisions, source_shards
from pipeline.text_checks import caption_problem
from recaption.prompts import resolve_prompt

log = logging.getLogger(__name__)
FEATURES = pa.schema([("uid", pa.int64()), ("shard", pa.string()), ("key", pa.string()), ("pos", pa.int64()),
                      ("width", pa.int64()), ("height", pa.int64()), ("digest", pa.string()),
                      ("phash", pa.string()), ("text_len", pa.int64()), ("clip_score", pa.float64()),
                      ("reason", pa.string()), ("caption_source", pa.string()),
                      ("recaption_problem", pa.string())])
RECAPTION, ALT_TEXT = "recaption", "alt_text"  # caption_source values: which text a sample trains on


def _size_problem(w: int, h: int, f) -> str:
    if min(w, h) < f.min_side:
        return "image_too_small"
    if max(w, h) <= f.min_long_edge:
        return "long_edge_too_short"
    if max(w, h) / max(1, min(w, h)) > f.max_aspect_ratio:
        return "aspect_ratio"
    return ""


def choose_text(sample: dict, f, recaptioned: bool, prompt) -> tuple:
    """-> (caption_source, text, problem of that text or None, problem of the recaption or None).

    text_field auto: the recaption when it passes the caption checks, else the alt-text, so that
    a captioner's failures (a random or broken model's token soup) never silently become training
    text; caption / alt_text: that text only."""
    if f.text_field == ALT_TEXT or not recaptioned:
        return ALT_TEXT, sample["alt_text"], caption_problem(sample["alt_text"], f), None
    caption = sample["caption"] or ""
    problem = caption_problem(caption, f, prompt)
    if problem is None or f.text_field == "caption":
        return RECAPTION, caption, problem, problem
    return ALT_TEXT, sample["alt_text"], caption_problem(sample["alt_text"], f), problem


def training_text(sample: dict, source: str) -> str:
    return (sample["caption"] or "") if source == RECAPTION else sample["alt_text"]


def shard_features(shard: str, cfg: PipelineConfig) -> pd.DataFrame:
    """One row per parseable sample: measurements and the first per-sample problem found."""
    import imagehash

    f, rec = cfg.filter, cfg.recaption
    prompt = None
    if rec.enabled:
        prompt = resolve_prompt(rec.prompt)
    rows, images, texts = [], [], []
    for pos, (key, fields, problem) in enumerate(iter_tar(shard)):
        s = None if problem else parse(key, fields)
        if s is None:
            log.warning("%s: skipping malformed member %r (%s)", shard, key, problem or "no uid")
            continue
        reason, w, h, ph = "", 0, 0, None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(s["image"]))
                im.load()
            # Size rules apply to the image as published (img2dataset may have resized it).
            w = int(s["meta"].get("original_width") or im.width)
            h = int(s["meta"].get("original_height") or im.height)
            ph = str(imagehash.phash(im))  # 64-bit hex; parquet has no safe uint64 with nulls
        except Exception:
            reason = "decode_error"
        source, text, text_problem, recaption_problem = choose_text(s, f, rec.enabled, prompt)
        reason = reason or _size_problem(w, h, f) or (text_problem or "")
        digest = s["meta"].get("sha256") or hashlib.sha256(s["image"] or b"").hexdigest()
        rows.append((s["uid"], shard_name(shard), key, pos, w, h, digest, ph, len(text), None, reason,
                     source, recaption_problem or ""))
        images.append(None if reason else s["image"])
        texts.append(text)
    df = pd.DataFrame(rows, columns=FEATURES.names)
    if f.clip.model and len(df):
        scores = ClipScorer.get(f.clip.model).score(images, texts, f.clip.batch_size)
        df["clip_score"] = scores
        low = (df.reason == "") & (df.clip_score < f.clip.min_score)
        df.loc[low, "reason"] = "clip_score_low"
    return df


def _features_path(cfg, shard: str) -> str:
    """Cached per settings: changing a threshold re-measures instead of reusing stale reasons."""
    key = cfg.hash("filter") + ("-" + cfg.hash("recaption") if cfg.recaption.enabled else "")
    return os.path.join(cfg.stage_dir(FILTER), "features", key, shard_name(shard) + ".parquet")


def _compute(cfg: PipelineConfig, shards: list) -> None:
    todo = [s for s in shards if not os.path.exists(_features_path(cfg, s))]
    log.info("filter: %d shards, %d already measured, %d to do", len(shards), len(shards) - len(todo), len(todo))
    if not todo:
        return
    import ray

    init_ray(cfg.ray)
    ray.data.DataContext.get_current().enable_progress_bars = False  # tqdm below tracks shards

    def one(row):
        df = shard_features(row["shard"], cfg)
        write_parquet_atomic(_features_path(cfg, row["shard"]), pa.Table.from_pandas(df, schema=FEATURES,
                                                                                     preserve_index=False))
        return {"shard": row["shard"], "n": len(df)}

    ds = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo)).map(one)
    for _ in tqdm(ds.iter_rows(), total=len(todo), desc="filter: measure shards", unit="shard"):
        pass


def run(cfg: PipelineConfig) -> pd.DataFrame:
    if cfg.filter.clip.model and not os.path.isdir(cfg.filter.clip.model):
        raise FileNotFoundError(f"filter.clip.model: no such directory {cfg.filter.clip.model!r}")
    expected = previous_decisions(cfg, "filter")
    shards = source_shards(cfg, "filter")
    _compute(cfg, shards)
    feats = pd.concat([pq.read_table(_features_path(cfg, s), schema=FEATURES).to_pandas() for s in shards],
                      ignore_index=True) if shards else pd.DataFrame(columns=FEATURES.names)
    feats = feats.sort_values(["shard", "pos"]).drop_duplicates("uid", keep="first")
    want = accounting.passed(expected)
    feats = feats[feats.uid.isin(want)]

    dedup = Deduper(cfg.filter.phash_max_distance, cfg.filter.dedup_exact)
    reasons = []
    for r in feats.itertuples(index=False):
        reasons.append(r.reason or dedup.check(r.digest, int(r.phash, 16) if isinstance(r.phash, str) else None) or "")
    feats = feats.assign(reason=reasons)
    rows = [(int(u), "filter", accounting.DROP if r else accounting.PASS, r) for u, r in zip(feats.uid, feats.reason)]
    # A uid the previous stage passed but no shard holds (a tampered or unreadable member).
    rows += [(int(u), "filter", accounting.DROP, "missing_from_shard") for u in sorted(want - set(feats.uid))]
    decisions = accounting.table(rows).to_pandas()
    # which text each sample trains on ("" for a dropped one): a column of the run's decisions.parquet
    sources = dict(zip(feats.uid[feats.reason == ""], feats.caption_source[feats.reason == ""]))
    decisions["caption_source"] = [sources.get(u, "") for u in decisions.uid]
    out = cfg.stage_dir(FILTER)
    accounting.write(os.path.join(out, "decisions.parquet"), rows, extra={"caption_source": decisions.caption_source})
    kept = feats[feats.reason == ""][["uid", "shard", "key", "caption_source"]]
    write_parquet_atomic(os.path.join(out, "kept.parquet"), pa.Table.from_pandas(kept, preserve_index=False))
    write_parquet_atomic(os.path.join(out, "features.parquet"), pa.Table.from_pandas(feats, preserve_index=False))
    log.info("filter: %d received, %d kept (%d train on the recaption, %d on the alt-text)", len(decisions),
             len(kept), (kept.caption_source == RECAPTION).sum(), (kept.caption_source == ALT_TEXT).sum())
    return decisions


def main(argv=None):
    stage_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
