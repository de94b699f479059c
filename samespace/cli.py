"""What every SameSpace command line shares: an argument parser whose errors are one line.

argparse prints the usage (several lines for a command with many options) before its error; a user who gave a
bad value needs only the line naming it. ``--help`` still shows the full usage.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import NoReturn

EXIT_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are ``error: <message> (see <prog> --help)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


@contextlib.contextmanager
def clean_warnings() -> Iterator[None]:
    """Print each warning as one ``warning: <message>`` line on stderr (no ``file:line: UserWarning:``).

    The command lines wrap their run in this, so a skipped file or an unparsed name reads like an error does.
    Only the formatting changes (warnings.formatwarning), so filters and recording (pytest.warns) still apply.
    """
    previous = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' API
        return "warning: " + str(message).replace("\n", "\\n") + "\n"  # one line, even for a name with a newline

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = previous
