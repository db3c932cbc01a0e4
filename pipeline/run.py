"""Run the data stages in order, then account for every input URL and write the report.

    python pipeline/run.py --config configs/data/demo_tiny.yaml [--stages download,recaption,filter,shard]

Every stage skips work a previous (possibly killed) run finished, so re-running resumes."""
from __future__ import annotations

import logging
import os
import sys
import time

if __package__ in (None, ""):  # run as a script, also under `ray job submit --working-dir .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import accounting, stage_io  # noqa: E402

log = logging.getLogger("pipeline.run")
ALL = ("download", "recaption", "filter", "shard")


def stages_for(cfg, requested=None) -> list:
    names = list(requested or ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(ALL)}")
    return [n for n in names if n != "recaption" or cfg.recaption.enabled]


def run(cfg, stages=None) -> dict:
    """-> the summary; also timings per stage in summary['seconds']."""
    import importlib

    import pandas as pd

    seconds = {}
    for name in stages_for(cfg, stages):
        t0 = time.time()
        importlib.import_module(f"pipeline.{name}").run(cfg)
        seconds[name] = round(time.time() - t0, 2)
        log.info("stage %s done in %.1fs", name, seconds[name])
    urls = pd.read_parquet(os.path.join(cfg.stage_dir(stage_io.INPUT), "urls.parquet"))
    summary = accounting.finalize(cfg.output_dir, stage_io.stage_frames(cfg), urls)
    summary["seconds"] = seconds
    if cfg.report.enabled:
        from pipeline import report
        report.write(cfg)
    return summary


def main(argv=None):
    from pipeline.cli import exit_on_user_error, parse_and_load, parser

    p = parser(__doc__)
    p.add_argument("--stages", default=",".join(ALL), help="comma-separated subset, in order")
    cfg, args = parse_and_load(argv, __doc__, p)
    exit_on_user_error(run, cfg, [s for s in args.stages.split(",") if s])


if __name__ == "__main__":  # img2dataset spawns workers: they must not re-run this
    main()
