"""Run the data stages in order, then account for every input URL and write the report.

    python pipeline/run.py --config configs/data/demo_tiny.yaml [--stages download,recaption,filter,shard]

Every stage skips work a previous (possibly killed) run finished, so re-running resumes. A subset
(`--stages download`, `--stages download,filter`) accounts for what those stages decided: the
summary says which stage it runs through; a filter without recaption output filters alt-texts."""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

if __package__ in (None, ""):  # run as a script, also under `ray job submit --working-dir .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import accounting, preflight, stage_io  # noqa: E402
from pipeline.cli import exit_on_user_error, parse_and_load, parser, start  # noqa: E402
from pvcommon.errors import UsageError  # noqa: E402

log = logging.getLogger("pipeline.run")
ALL = ("download", "recaption", "filter", "shard")


def plan(cfg, requested=None):
    """-> (config for this run, stage names in order). A subset that leaves out an enabled
    recaption stage with no output yet runs the later stages on the download's alt-texts."""
    names = list(requested or ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise UsageError(f"--stages: unknown stage(s) {unknown}; choose from {list(ALL)}")
    if not names:
        raise UsageError(f"--stages: name at least one of {list(ALL)}")
    names = [n for n in ALL if n in names]  # pipeline order
    recaptioned = os.path.exists(os.path.join(cfg.stage_dir(stage_io.RECAPTION), "decisions.parquet"))
    later = {"filter", "shard"} & set(names)
    if cfg.recaption.enabled and "recaption" not in names and later and not recaptioned:
        log.info("recaption not requested and not run before: %s use the alt-texts", sorted(later))
        cfg = dataclasses.replace(cfg, recaption=dataclasses.replace(cfg.recaption, enabled=False))
    return cfg, [n for n in names if n != "recaption" or cfg.recaption.enabled]


def run(cfg, stages=None) -> dict:
    """-> the summary; also timings per stage in summary['seconds']."""
    import importlib

    import pandas as pd

    cfg, names = plan(cfg, stages)
    seconds = {}
    for name in names:
        t0 = time.time()
        importlib.import_module(f"pipeline.{name}").run(cfg)
        seconds[name] = round(time.time() - t0, 2)
        log.info("stage %s done in %.1fs", name, seconds[name])
    urls = pd.read_parquet(os.path.join(cfg.stage_dir(stage_io.INPUT), "urls.parquet"))
    summary = accounting.finalize(cfg.output_dir, stage_io.stage_frames(cfg, through=names[-1]), urls)
    summary["seconds"] = seconds
    if cfg.report.enabled and summary["through"] == "shard":
        from pipeline import report  # matplotlib: only when the report is written
        report.write(cfg)
    return summary


def dry_run(cfg, requested=None) -> str:
    """The checks run() makes before its first stage (pipeline/preflight.py), without the lock on
    output_dir; -> the resolved config and the stages that would run."""
    import yaml

    cfg, names = plan(cfg, requested)
    preflight.check(cfg, names)
    return ("# resolved config\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) +
            f"# dry run: checks passed; would run {', '.join(names)} into {cfg.output_dir}\n")


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--stages", default=",".join(ALL), help="comma-separated subset, in order")
    p.add_argument("--dry-run", action="store_true", help="check the config and inputs, print the resolved "
                   "config and the stages that would run; start nothing")
    cfg, args = parse_and_load(argv, __doc__, p)
    requested = [s for s in args.stages.split(",") if s]
    if args.dry_run:
        print(exit_on_user_error(dry_run, cfg, requested), end="")
        return
    exit_on_user_error(lambda: start(cfg, plan(cfg, requested)[1]))
    exit_on_user_error(run, cfg, requested)


if __name__ == "__main__":  # img2dataset spawns workers: they must not re-run this
    main()
