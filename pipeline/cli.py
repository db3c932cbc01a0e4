"""Shared command line for the stage scripts: --config, --set overrides, logging, clean errors."""
from __future__ import annotations

import argparse
import logging
import sys

from pipeline import config as config_mod


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    except config_mod.ConfigError as e:
        p.exit(2, f"config error: {e}\n")
    return cfg, args


def exit_on_user_error(fn, *args):
    """Missing files, unreachable clusters and bad model paths end with one clear line, not a trace."""
    from pipeline.inputs import InputError
    from pipeline.ray_setup import RayConnectError
    from recaption.base import BackendUnavailable
    try:
        return fn(*args)
    except (FileNotFoundError, RayConnectError, config_mod.ConfigError, InputError, BackendUnavailable) as e:
        logging.getLogger("pipeline").error("%s", e)
        sys.exit(f"error: {e}")


def stage_main(run, doc: str, argv=None) -> None:
    """The command line of one stage: parse --config/--set, then run it with clear user errors."""
    cfg, _ = parse_and_load(argv, doc)
    exit_on_user_error(run, cfg)
