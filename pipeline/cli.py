"""Shared command line for the stage scripts: --config, --set overrides, logging, and one error
path (pvcommon/errors.py): a user's mistake ends with one line, exit 2 for a config or usage
error, 1 for a data error (the URL list, a stage's missing input), never a traceback."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline import config as config_mod
from pipeline import preflight
from pipeline.ray_setup import RayConnectError
from pvcommon.argparser import ArgumentParser
from pvcommon.errors import DataError, UserError, report
from pvcommon.runlock import lock_run_dir


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def parser(doc: str) -> argparse.ArgumentParser:
    p = ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (see configs/data/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set recaption.batch_size=16 (repeatable)")
    p.add_argument("--log-level", default="INFO")
    return p


def parse_and_load(argv, doc: str, p: argparse.ArgumentParser = None):
    """-> (config, parsed args); a bad config exits with status 2 and one line saying what is wrong."""
    p = p or parser(doc)
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg = config_mod.load(args.config, args.set)
    except UserError as e:
        sys.exit(report(e))
    return cfg, args


def _as_user_error(e: Exception) -> UserError:
    """Errors from deeper code that are the user's to fix: a missing file or stage output, an
    unreachable cluster."""
    return e if isinstance(e, UserError) else DataError(str(e))


def exit_on_user_error(fn, *args):
    """Run `fn`; a user's mistake ends with its one line (logged too) and its exit code."""
    try:
        return fn(*args)
    except (UserError, FileNotFoundError, RayConnectError) as e:
        err = _as_user_error(e)
        logging.getLogger("pipeline").error("%s", err)
        sys.exit(report(err))


def start(cfg, stages) -> None:
    """Before any stage: the checks that need no data (pipeline/preflight.py), then the lock on
    output_dir so that a second run on it stops here, naming this one's pid."""
    preflight.check(cfg, stages)
    lock_run_dir(cfg.output_dir, "output_dir")


def stage_main(run, doc: str, argv=None) -> None:
    """The command line of one stage: parse --config/--set, check, lock, then run it."""
    cfg, _ = parse_and_load(argv, doc)
    name = os.path.splitext(os.path.basename(run.__code__.co_filename))[0]  # also as __main__
    exit_on_user_error(start, cfg, [name])
    exit_on_user_error(run, cfg)
