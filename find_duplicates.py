"""``python find_duplicates.py PHOTOS ...``: the same as ``samespace find PHOTOS ...``."""

import sys

from samespace import cli
from samespace.commands.find import main

if __name__ == "__main__":
    sys.exit(cli.run_stoppably(main))
