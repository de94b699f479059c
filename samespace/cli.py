"""What every SameSpace command line shares: an argument parser whose errors are one line.

argparse prints the usage (several lines for a command with many options) before its error; a user who gave a
bad value needs only the line naming it. ``--help`` still shows the full usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are ``error: <message> (see <prog> --help)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)
