"""Read the URL list once, give every row a uid (its row number), and stop rows that cannot be
downloaded or trusted (empty or non-http URL, non-UTF-8 alt-text, repeated URL) with a reason."""
from __future__ import annotations

import logging
import os

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline import accounting
from pipeline.fsio import write_parquet_atomic
from pvcommon.errors import DataError

log = logging.getLogger(__name__)


class InputError(DataError):
    """The URL list cannot be used as given (missing, empty, unreadable, format, columns): exit 1."""


class InputNotFound(InputError, FileNotFoundError):
    pass


def check_readable(path: str) -> None:
    """What can be told about the URL list without reading it; run before any stage starts."""
    if not os.path.exists(path):
        raise InputNotFound(f"input URL list not found: {path!r} (expected a .parquet or .csv file)")
    if not os.path.isfile(path):
        raise InputError(f"input {path!r} is a directory; set input to a .parquet, .csv or .tsv file")
    if not path.endswith((".csv", ".tsv", ".parquet")):
        raise InputError(f"input {path!r}: unsupported format; use .parquet, .csv or .tsv")
    if os.path.getsize(path) == 0:
        raise InputError(f"input {path!r} is empty (0 bytes); it needs a header row with a "
                         f"URL column and one row per image")


def read_raw(path: str, url_col: str, caption_col: str) -> pa.Table:
    check_readable(path)
    try:
        return _read(path, url_col, caption_col)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"input {path!r} cannot be read as {os.path.splitext(path)[1][1:]}: {first}") from None


def _read(path: str, url_col: str, caption_col: str) -> pa.Table:
    if path.endswith(".csv") or path.endswith(".tsv"):
        # Read text columns as raw bytes so invalid UTF-8 is caught per row, not as a crash.
        opts = pacsv.ConvertOptions(column_types={url_col: pa.binary(), caption_col: pa.binary()})
        parse = pacsv.ParseOptions(delimiter="\t" if path.endswith(".tsv") else ",", newlines_in_values=True)
        t = pacsv.read_csv(path, parse_options=parse, convert_options=opts,
                           read_options=pacsv.ReadOptions(use_threads=True))
    else:  # .parquet (check_readable refused other suffixes)
        t = pq.read_table(path)
    if url_col not in t.column_names:
        raise InputError(f"input {path!r} has no URL column {url_col!r}; columns: {t.column_names} "
                         f"(set url_col in the config)")
    if caption_col not in t.column_names:
        log.warning("input has no caption column %r: alt-texts will be empty", caption_col)
        t = t.append_column(caption_col, pa.nulls(len(t), pa.binary()))
    return t.select([url_col, caption_col])


def _decode(values: pa.ChunkedArray) -> list:
    """bytes/str -> str, or a _BAD marker for invalid UTF-8; None stays None."""
    out = []
    for v in pc.cast(values, pa.binary()).to_pylist():
        if v is None:
            out.append(None)
            continue
        try:
            out.append(v.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(_BAD)
    return out


_BAD = object()


def prepare(input_path: str, url_col: str, caption_col: str, out_dir: str, local_files: bool = False):
    """Writes urls.parquet (every row), decisions.parquet and to_download.parquet (passing rows).
    local_files: file:// URLs pass too (img2dataset opens them with urllib like http URLs)."""
    t = read_raw(input_path, url_col, caption_col)
    urls, caps = _decode(t.column(url_col)), _decode(t.column(caption_col))
    schemes = ("http://", "https://") + (("file://",) if local_files else ())
    seen, rows, keep = set(), [], []
    for uid, (url, cap) in enumerate(zip(urls, caps)):
        if url is _BAD or not url or not url.strip().lower().startswith(schemes):
            reason = "invalid_url"
        elif cap is _BAD:
            reason = "caption_not_utf8"
        elif url.strip() in seen:
            reason = "duplicate_url"
        else:
            reason = ""
            seen.add(url.strip())
            keep.append((uid, url.strip(), cap or ""))
        rows.append((uid, "input", accounting.DROP if reason else accounting.PASS, reason))
    url_text = [u if isinstance(u, str) else None for u in urls]
    cap_text = [c if isinstance(c, str) else None for c in caps]
    everything = pd.DataFrame({"uid": range(len(urls)), "url": url_text, "alt_text": cap_text})
    write_parquet_atomic(os.path.join(out_dir, "urls.parquet"), pa.Table.from_pandas(everything, preserve_index=False))
    accounting.write(os.path.join(out_dir, "decisions.parquet"), rows)
    todo = pd.DataFrame(keep, columns=["uid", "url", "caption"])
    write_parquet_atomic(os.path.join(out_dir, "to_download.parquet"), pa.Table.from_pandas(todo, preserve_index=False))
    log.info("input: %d rows, %d to download, %d stopped", len(urls), len(keep), len(urls) - len(keep))
    return everything, todo
