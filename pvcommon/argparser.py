"""argparse whose usage errors are one line (prog, what is wrong, where to look) and exit 2, on
rank 0 only, like every other user mistake (pvcommon/errors.py)."""
from __future__ import annotations

import argparse

from pvcommon.errors import USAGE, is_rank0


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (prog, what is wrong, where to look), exit 2."""

    def error(self, message):
        if is_rank0():
            self.exit(USAGE, f"{self.prog}: error: {message} (see --help)\n")
        self.exit(USAGE)
