"""``samespace act``: keep one photo per duplicate group of a ``find --json`` result and move, trash or link the
rest (or exactly the photos a choices file from the review page names).

A dry run (the default) prints the plan and changes nothing; ``--apply`` does it and writes an undo manifest
(``samespace undo MANIFEST``). The planning, checks and moves are in samespace.actions, the choices file in
samespace.choices.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from samespace import actions, choices, cli, keepers, outputs, photo_files

EXAMPLES = """examples:
  samespace act dups.json --move-to ~/duplicates             # the plan: what would move where, nothing changed
  samespace act dups.json --move-to ~/duplicates --apply     # move them; prints the undo manifest
  samespace act dups.json --hardlink --only identical --apply  # byte copies become hard links to their keeper
  samespace act dups.json --symlink --keep oldest --prefer photos/originals
  samespace act dups.json --trash --apply                    # to the system trash; undo finds them there
  samespace act dups.json --choices choices.json --trash     # the photos ticked on the review page (find --html)
  samespace undo dups.undo-20250101-120000.json              # put every file back
"""


def build_parser(prog: str = "samespace act") -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=prog,
        description="Keep one photo per duplicate group of RESULT.json (written by `samespace find --json`) and "
        "move the others away or replace them by links to it. Without --apply nothing is changed: the plan is "
        "printed, one line per file. Nothing is ever deleted; photos in a --against library and the kept photo "
        "are never touched; a file changed since the scan is refused and left alone. Exit status: 0 done, 1 "
        f"some files refused (each named), {cli.EXIT_ERROR} bad input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument("result", metavar="RESULT.json", help="the JSON written by samespace find --json")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--move-to", metavar="DIR", help="move the duplicates into DIR, keeping their path relative to "
                      "the scanned folder (a name taken gets a numbered suffix)")
    what.add_argument("--hardlink", action="store_true", help="replace each duplicate by a hard link to its keeper "
                      "(same file system); the file itself goes to the undo folder")
    what.add_argument("--symlink", action="store_true", help="replace each duplicate by a symbolic link to its "
                      "keeper; the file itself goes to the undo folder")
    what.add_argument("--trash", action="store_true", help="move the duplicates to the system trash (send2trash); "
                      "undo takes them back out where the trash can be read (freedesktop trash of Linux)")
    parser.add_argument("--choices", metavar="CHOICES.json", help="act on exactly the photos this file names "
                        "(the review page's Export choices, made on this RESULT.json's page); every other photo "
                        "is kept")
    parser.add_argument("--keep", choices=keepers.RULES, default=keepers.DEFAULT_RULE,
                        help="which photo of a group to keep first (default: resolution; ties: then resolution, "
                        "largest file, oldest, path order)")
    parser.add_argument("--prefer", action="append", default=[], metavar="DIR",
                        help="photos under DIR are kept before any rule (repeatable)")
    parser.add_argument("--only", choices=("identical",), help="identical: act only on byte-identical copies of the "
                        "keeper (sha256)")
    parser.add_argument("--apply", action="store_true", help="do it (default: print the plan only)")
    parser.add_argument("--manifest", metavar="FILE", help="the undo manifest (default: beside RESULT.json, "
                        "RESULT.undo-<time>.json); never replaces an existing file")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "samespace act") -> int:
    """The command line: one ``error:`` line and exit 2 on bad input (``--debug``: the traceback)."""
    args = build_parser(prog).parse_args(argv)
    try:
        return _run(args)
    except (actions.ActError, outputs.OutputError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {outputs.printable_name(str(exc), quote=False)}", file=sys.stderr)
        return cli.EXIT_ERROR


def default_manifest(result: Path) -> Path:
    """``RESULT.undo-<time>.json`` beside the result, the first such name not taken."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = result.with_name(f"{result.stem}.undo-{stamp}{f'-{n}' if n else ''}.json")
        if not os.path.lexists(path) and not os.path.lexists(path.with_suffix(".files")):
            return path
    raise actions.ActError(f"{result.parent}: no free name for the undo manifest")


def _check_places(args: argparse.Namespace, doc: actions.Document, manifest: Path, undo_dir: Path) -> None:
    """Refuse, before any file is touched, a destination in a library or scanned folder or one that is not a
    folder, and a manifest or undo folder that exists (outputs.check_outputs: photos, links, devices)."""
    if os.path.lexists(manifest):
        raise actions.ActError(f"--manifest {manifest}: exists; the undo manifest never replaces a file")
    if os.path.lexists(undo_dir):
        raise actions.ActError(f"{undo_dir}: exists; choose another --manifest")
    targets = [outputs.Target("--manifest", manifest, kind=outputs.UNDO_MANIFEST)]
    if args.move_to:
        for folder in [*doc.library, *doc.folders]:
            if actions.is_under(args.move_to, folder):
                raise actions.ActError(f"--move-to {args.move_to}: is inside the scanned folder {folder}; "
                                       "choose a folder outside it")
        targets.append(outputs.Target("--move-to", Path(args.move_to), is_dir=True))
    outputs.check_outputs(targets, inputs=[*doc.folders, *doc.library],
                          image_extensions=photo_files.readable_extensions())


def _run(args: argparse.Namespace) -> int:
    doc = actions.load_result(args.result)
    action = "move" if args.move_to else "hardlink" if args.hardlink else "trash" if args.trash else "symlink"
    chosen = choices.load_choices(args.choices, doc) if args.choices else None
    manifest_path = Path(args.manifest) if args.manifest else default_manifest(Path(args.result))
    undo_dir = manifest_path.with_suffix(".files")
    _check_places(args, doc, manifest_path, undo_dir)  # a dry run too: it refuses what --apply would refuse
    plan = actions.make_plan(doc, action, args.keep, args.prefer, args.only == "identical", chosen)
    for line in plan.refused:
        print(f"refused: {line}", file=sys.stderr)
    counts = (f"{cli.counted(plan.groups, 'group')}, {cli.counted(len(plan.steps), 'file')} to {action}"
              + (f", {plan.not_identical} not identical left" if args.only else "")
              + (f", {cli.counted(plan.library, 'library photo')} left" if plan.library else "")
              + (f", {len(plan.refused)} refused" if plan.refused else ""))
    if not args.apply:
        for step in plan.steps:
            print(f"{step.action} {outputs.printable_name(step.path)}  keep {outputs.printable_name(step.keeper)}: "
                  f"{step.reason}")
        print(f"dry run: {counts}; nothing changed (add --apply to do it)")
        return 1 if plan.refused else 0
    if not plan.steps:
        print(f"nothing to do: {counts}")
        return 1 if plan.refused else 0
    manifest = actions.Manifest(manifest_path, os.path.abspath(args.result), action)
    try:
        done, refused = actions.apply_plan(plan, manifest,
                                           Path(os.path.abspath(args.move_to)) if args.move_to else None,
                                           Path(os.path.abspath(undo_dir)))
    except KeyboardInterrupt:  # between steps: every file moved so far is in the manifest
        print(f"stopped after {cli.counted(len(manifest.steps), 'file')}; undo with: samespace undo {manifest_path}",
              file=sys.stderr)
        raise
    for line in refused:
        print(f"refused: {line}", file=sys.stderr)
    print(f"done: {cli.counted(done, 'file')} ({counts}); undo with: samespace undo {manifest_path}")
    return 1 if plan.refused or refused else 0
