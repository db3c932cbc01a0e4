"""Per-sample accounting: every stage records a decision for every sample it received, and the
run's decisions table says, for each input URL, the stage where it stopped and why."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Iterable, List, Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.fsio import write_bytes_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

STAGES = ("input", "download", "recaption", "filter", "shard")
SCHEMA = pa.schema([("uid", pa.int64()), ("stage", pa.string()), ("decision", pa.string()),
                    ("reason", pa.string())])
PASS, DROP, KEPT = "pass", "drop", "kept"


class AccountingError(RuntimeError):
    pass


def table(rows: Iterable[tuple], extra: Optional[dict] = None) -> pa.Table:
    """rows: (uid, stage, decision, reason); extra: per-row string columns a stage adds (name ->
    values in row order), carried into the run's decisions.parquet (e.g. the filter's caption_source)."""
    cols = list(zip(*rows)) or [[], [], [], []]
    t = pa.table([pa.array(c, type=f.type) for c, f in zip(cols, SCHEMA)], schema=SCHEMA)
    for name, values in (extra or {}).items():
        values = pa.array(list(values), type=pa.string())
        if len(values) != len(t):
            raise AccountingError(f"extra column {name!r} has {len(values)} values for {len(t)} decisions")
        t = t.append_column(name, values)
    return t


def write(path: str, rows: Iterable[tuple], extra: Optional[dict] = None) -> None:
    write_parquet_atomic(path, table(rows, extra))


def read(paths: List[str]) -> pd.DataFrame:
    if not paths:
        return table([]).to_pandas()
    frames = []
    for p in paths:
        t = pq.read_table(p)
        base = t.select(SCHEMA.names).cast(SCHEMA)
        frames.append(pa.table(base.columns + [t.column(n) for n in t.column_names if n not in SCHEMA.names],
                               names=SCHEMA.names + [n for n in t.column_names if n not in SCHEMA.names]).to_pandas())
    return pd.concat(frames, ignore_index=True)


def passed(df: pd.DataFrame) -> set:
    return set(df.loc[df.decision != DROP, "uid"])


def check_handoff(prev_name: str, prev: pd.DataFrame, name: str, cur: pd.DataFrame) -> None:
    """What a stage received must be exactly what the previous one let through, once each."""
    dup = cur.uid[cur.uid.duplicated()]
    if len(dup):
        raise AccountingError(f"{name}: {len(dup)} samples decided twice, e.g. uid {int(dup.iloc[0])}")
    want, got = passed(prev), set(cur.uid)
    if want != got:
        missing, extra = sorted(want - got)[:5], sorted(got - want)[:5]
        raise AccountingError(f"{name} received {len(got)} samples but {prev_name} passed {len(want)}: "
                              f"missing {missing}, unexpected {extra}")


def finalize(output_dir: str, stage_frames: List[tuple], urls: pd.DataFrame) -> dict:
    """stage_frames: [(stage, decisions DataFrame)] in pipeline order; urls: uid, url, alt_text.

    Writes decisions.parquet (one row per input URL) and summary.json; returns the summary. When
    the frames end before the shard stage (a `--stages` subset), "kept" means passed the last of
    them, and the summary's "through" names it."""
    for (pn, p), (n, c) in zip(stage_frames, stage_frames[1:]):
        check_handoff(pn, p, n, c)
    first = stage_frames[0][1]
    if set(first.uid) != set(urls.uid) or len(first) != len(urls):
        raise AccountingError(f"input decisions cover {len(first)} rows, the input has {len(urls)}")
    final = None
    for name, df in stage_frames:
        stopped = df[df.decision == DROP]
        final = stopped if final is None else pd.concat([final, stopped])
    last_name, last = stage_frames[-1]
    kept = last[last.decision != DROP].assign(decision=KEPT, reason="")
    final = pd.concat([final, kept], ignore_index=True)
    final = final[SCHEMA.names]
    for _, df in stage_frames:  # a stage's extra columns, e.g. the filter's caption_source
        extra = [c for c in df.columns if c not in SCHEMA.names]
        if extra:
            final = final.merge(df[["uid"] + extra], on="uid", how="left")
            final[extra] = final[extra].fillna("")
    final = final.merge(urls[["uid", "url"]], on="uid", how="left").sort_values("uid").reset_index(drop=True)
    if len(final) != len(urls) or final.uid.duplicated().any():
        raise AccountingError(f"decisions table has {len(final)} rows for {len(urls)} inputs")
    write_parquet_atomic(os.path.join(output_dir, "decisions.parquet"),
                         pa.Table.from_pandas(final, preserve_index=False))
    summary = summarize(final, stage_frames)
    summary["through"] = last_name
    write_bytes_atomic(os.path.join(output_dir, "summary.json"), json.dumps(summary, indent=2).encode())
    print_summary(summary)
    return summary


def summarize(final: pd.DataFrame, stage_frames: List[tuple]) -> dict:
    reasons = Counter(f"{s}/{r}" for s, r, d in zip(final.stage, final.reason, final.decision) if d == DROP)
    by_stage = {}
    for name, df in stage_frames:
        drops = int((df.decision == DROP).sum())
        by_stage[name] = {"received": len(df), "passed": len(df) - drops, "dropped": drops}
    summary = {"input": int(len(final)), "kept": int((final.decision == KEPT).sum()),
               "dropped": int((final.decision == DROP).sum()),
               "dropped_by_reason": dict(sorted(reasons.items())), "by_stage": by_stage}
    if summary["kept"] + sum(reasons.values()) != summary["input"]:
        raise AccountingError(f"counts do not add up: {summary}")
    return summary


def print_summary(summary: dict) -> None:
    through = summary.get("through", "shard")
    upto = "" if through == "shard" else f" (through the {through} stage; later stages not run)"
    lines = [f"input {summary['input']}  kept {summary['kept']}  dropped {summary['dropped']}{upto}"]
    for reason, n in summary["dropped_by_reason"].items():
        lines.append(f"  dropped {n:>7}  {reason}")
    lines.append(f"  check: {summary['kept']} kept + {summary['dropped']} dropped = {summary['input']} input")
    print("\n".join(lines), flush=True)
