"""``python -m samespace ...``: the same as the ``samespace`` command."""

import sys

from samespace.cli import main

sys.exit(main())
