"""``python embed.py PHOTOS ...``: the same as ``samespace embed PHOTOS ...``; what embed.yaml runs on each slot."""

import sys

from samespace import cli
from samespace.commands.embed import main

if __name__ == "__main__":
    sys.exit(cli.run_stoppably(main))
