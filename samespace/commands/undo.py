"""``samespace undo``: put back every file an applied ``samespace act`` moved, trashed or replaced by a link."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from samespace import actions, cli, outputs, undoing

EXAMPLES = """examples:
  samespace undo dups.undo-20250101-120000.json   # every file back, byte for byte; again: nothing to do
"""


def build_parser(prog: str = "samespace undo") -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=prog,
        description="Restore every file listed in an undo manifest written by `samespace act --apply`, byte for "
        "byte (sha256 checked); a trashed file is taken back out of a freedesktop trash (Linux; elsewhere undo says "
        "it is in the system trash). A path that now holds something else is refused and left alone; a second undo "
        f"does nothing. Exit status: 0 done, 1 some files refused (each named), {cli.EXIT_ERROR} bad input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument("manifest", metavar="MANIFEST", help="the undo manifest samespace act printed")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "samespace undo") -> int:
    """The command line: one ``error:`` line and exit 2 on bad input (``--debug``: the traceback)."""
    args = build_parser(prog).parse_args(argv)
    try:
        done = undoing.undo(args.manifest)
    except (actions.ActError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {outputs.printable_name(str(exc), quote=False)}", file=sys.stderr)
        return cli.EXIT_ERROR
    for line in done.refused:
        print(f"refused: {line}", file=sys.stderr)
    if not done.restored and not done.refused:
        print(f"nothing to undo: every file of {args.manifest} is already back ({cli.counted(done.already, 'file')})")
        return 0
    print(f"restored {cli.counted(done.restored, 'file')}" + (f", {done.already} already back" if done.already else "")
          + (f", {len(done.refused)} refused" if done.refused else ""))
    return 1 if done.refused else 0
