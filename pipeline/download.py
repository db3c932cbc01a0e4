"""Stage 1: URLs -> webdataset shards with img2dataset (multiprocessing locally, its Ray
distributor on a cluster). Resumes through img2dataset's incremental mode (a shard is done once
its _stats.json exists) and records a decision for every URL."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import re

if __package__ in (None, ""):  # run as a script, also under `ray job submit --working-dir .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from img2dataset.resizer import Resizer  # noqa: E402

from pipeline import accounting  # noqa: E402
from pipeline.cli import stage_main  # noqa: E402
from pipeline.config import ConfigError, PipelineConfig  # noqa: E402
from pipeline.fsio import write_parquet_atomic  # noqa: E402
from pipeline.image_guard import check_bytes  # noqa: E402
from pipeline.inputs import prepare  # noqa: E402
from pipeline.ray_setup import init_ray  # noqa: E402
from pipeline.stage_io import DOWNLOAD, INPUT, finished_shards, guard_settings, settings  # noqa: E402

log = logging.getLogger(__name__)


class GuardedResizer(Resizer):
    """img2dataset's resizer behind image_guard's header checks. A subclass (not a wrapper) so
    img2dataset pickles it into its worker processes or Ray tasks like its own resizer."""

    def __call__(self, img_stream, blurring_bbox_list=None):
        img_stream.seek(0)
        reason = check_bytes(img_stream.read(), self.max_image_area)
        img_stream.seek(0)
        if reason:
            return None, None, None, None, None, reason
        return super().__call__(img_stream, blurring_bbox_list)


@contextlib.contextmanager
def _guarded_resizer():
    import importlib

    m = importlib.import_module("img2dataset.main")  # the package re-exports a *function* named main
    original, m.Resizer = m.Resizer, GuardedResizer
    try:
        yield
    finally:
        m.Resizer = original


_REASONS = [  # img2dataset error_message -> stable reason names
    (re.compile(r"HTTP Error (\d+)"), lambda g: f"http_{g.group(1)}"),
    (re.compile(r"timed out|timeout", re.I), lambda g: "timeout"),
    (re.compile(r"image too small"), lambda g: "image_too_small"),
    (re.compile(r"image area too large"), lambda g: "decompression_bomb"),
    (re.compile(r"aspect ratio too large"), lambda g: "aspect_ratio_too_large"),
    (re.compile(r"decod", re.I), lambda g: "decode_error"),
    (re.compile(r"urlopen error|Connection|Name or service", re.I), lambda g: "unreachable"),
]


def reason_of(error_message) -> str:
    msg = str(error_message or "unknown")
    if re.fullmatch(r"[a-z0-9_]+", msg):  # already one of ours (GuardedResizer)
        return msg
    for pattern, name in _REASONS:
        m = pattern.search(msg)
        if m:
            return name(m)
    return "download_error"


def collect_decisions(directory: str, expected: pd.DataFrame) -> pd.DataFrame:
    parts = [pq.read_table(s + ".parquet", columns=["uid", "status", "error_message"]).to_pandas()
             for s in finished_shards(directory)]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["uid", "status", "error_message"])
    ok = df.status == "success"
    rows = [(int(u), "download", accounting.PASS if s else accounting.DROP, "" if s else reason_of(e))
            for u, s, e in zip(df.uid, ok, df.error_message)]
    out = accounting.table(rows).to_pandas()
    accounting.check_handoff("input", expected.assign(decision=accounting.PASS), "download", out)
    return out


def with_extra_columns(cfg: PipelineConfig, todo: pd.DataFrame, in_dir: str) -> pd.DataFrame:
    """Adds cfg.extra_columns of the URL list (by row: uid is the row number) to the rows to
    download and rewrites to_download.parquet with them; img2dataset saves them per sample."""
    if not cfg.extra_columns:
        return todo
    if cfg.input.endswith((".csv", ".tsv")):
        import pyarrow.csv as pacsv
        t = pacsv.read_csv(cfg.input, parse_options=pacsv.ParseOptions(
            delimiter="\t" if cfg.input.endswith(".tsv") else ",", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in cfg.extra_columns}))
    else:
        t = pq.read_table(cfg.input)
    missing = [c for c in cfg.extra_columns if c not in t.column_names]
    if missing:
        raise ConfigError(f"extra_columns: {missing} not in {cfg.input} (its columns: {t.column_names})")
    extra = t.select(cfg.extra_columns).to_pandas().iloc[todo.uid.to_numpy()].reset_index(drop=True)
    todo = pd.concat([todo.reset_index(drop=True), extra], axis=1)
    write_parquet_atomic(os.path.join(in_dir, "to_download.parquet"), pa.Table.from_pandas(todo, preserve_index=False))
    return todo


def run(cfg: PipelineConfig) -> pd.DataFrame:
    """Returns the download stage's decisions (one row per URL handed to img2dataset)."""
    from img2dataset import download

    in_dir, out_dir = cfg.stage_dir(INPUT), cfg.stage_dir(DOWNLOAD)
    guard_settings(out_dir, "download", dict(settings(cfg, "download", ("processes", "threads", "distributor")),
                                             input=os.path.abspath(cfg.input), url_col=cfg.url_col,
                                             caption_col=cfg.caption_col,
                                             **({"extra_columns": cfg.extra_columns} if cfg.extra_columns else {})))
    _, todo = prepare(cfg.input, cfg.url_col, cfg.caption_col, in_dir, cfg.local_files)
    todo = with_extra_columns(cfg, todo, in_dir)
    d = cfg.download
    distributor = d.distributor
    if distributor == "auto":
        distributor = "ray" if (cfg.ray.address or os.environ.get("RAY_ADDRESS")) else "multiprocessing"
    if distributor == "ray":
        init_ray(cfg.ray)
    log.info("download: %d URLs -> %s with img2dataset (%s distributor)", len(todo), out_dir, distributor)
    if len(todo):
        with _guarded_resizer():
            download(
                url_list=os.path.join(in_dir, "to_download.parquet"), input_format="parquet",
                url_col="url", caption_col="caption", save_additional_columns=["uid", *cfg.extra_columns],
                output_folder=out_dir, output_format="webdataset", encode_format="jpg",
                encode_quality=d.encode_quality, image_size=d.image_size, resize_mode=d.resize_mode,
                resize_only_if_bigger=d.resize_only_if_bigger, min_image_size=d.min_image_size,
                max_image_area=d.max_image_area, max_aspect_ratio=d.max_aspect_ratio,
                number_sample_per_shard=d.samples_per_shard, processes_count=d.processes,
                thread_count=d.threads, timeout=d.timeout, retries=d.retries, distributor=distributor,
                incremental_mode="incremental", enable_wandb=False, extract_exif=False,
                compute_hash="sha256",
            )
    decisions = collect_decisions(out_dir, todo)
    accounting.write(os.path.join(out_dir, "decisions.parquet"), decisions.itertuples(index=False))
    log.info("download: %d ok, %d dropped", (decisions.decision == accounting.PASS).sum(),
             (decisions.decision == accounting.DROP).sum())
    return decisions


def main(argv=None):
    stage_main(run, __doc__, argv)


if __name__ == "__main__":  # img2dataset spawns workers: they must not re-run this
    main()
