"""One error path for every command line: a user's mistake ends with one line that names the
file, key or number to change, and an exit code (2: usage or config, 1: data), never a traceback."""
from __future__ import annotations

import os
import sys

USAGE, DATA = 2, 1


class UserError(Exception):
    """A mistake the user fixes by changing what the message names."""
    exit_code = USAGE
    prefix = "error"

    def line(self) -> str:
        return f"{self.prefix}: {self}"


class ConfigError(UserError, ValueError):
    """A config (file, override or combination of settings) that cannot work."""
    prefix = "config error"


class UsageError(UserError, ValueError):
    """A command-line argument that cannot work (a path, a flag combination)."""


class DataError(UserError, ValueError):
    """Input data that cannot be used as given (a missing or empty manifest, an unreadable file)."""
    exit_code = DATA


def is_rank0() -> bool:
    """Under torchrun every rank validates the same config; only rank 0 says what is wrong."""
    return os.environ.get("RANK", "0") == "0"


def report(e: UserError, stream=None) -> int:
    """Print the error's one line (on rank 0 only) and return its exit code."""
    if is_rank0():
        print(e.line(), file=stream or sys.stderr, flush=True)
    return e.exit_code


def run_cli(fn, *args, **kwargs):
    """Call a command line's body; a UserError ends the process with its one line and code."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        sys.exit(report(e))
