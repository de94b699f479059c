"""A real-photo development set: photographs that install from package registries, in the Airbnb layout.

``samespace devset build data/real`` fetches pinned Debian packages that ship real photographs
(``apt-get download`` + ``dpkg-deb -x`` into a cache folder: nothing is installed system-wide), picks the
photos listed in ``photo_sources.yaml``, and writes ``Training Data/`` and ``Test Data/`` with room-type folders
and ``<city>_<id>_<n>.jpg`` names, where ``city`` is the source package and ``id`` one place.

- **Disjoint sources.** Every source package belongs to exactly one split.
- **Duplicates** of a place are re-shoot transforms of one photo (crop and zoom, perspective warp,
  rotation, exposure, white balance, contrast, blur, downscale, JPEG quality; ``reshooting.reshoot``) and,
  where a source has them, genuinely different shots of the place (frames of a video sequence, the two
  views of a stereo pair, adjacent photos of a stitched panorama). Some places are singletons.
- **Deterministic.** The same seed and the same source photos give the same bytes. ``manifest.csv`` at the
  set root lists every written file with its source, original file, licence, the sha256 of the source
  photo, its ``shot`` id and the transform parameters. ``manifests.shot_ids`` and
  ``manifests.different_shot_pairs`` read it back for evaluation on different-shot pairs alone.

This module is the command line (``build``, ``build-distinct``, ``sources``, ``verify``; ``samespace devset
--help``); the work is done by the modules of :mod:`samespace.devsets`: ``photo_sources`` (the tables),
``fetching``, ``qt_resources``, ``reshooting``, ``builder``, ``manifests`` and ``distinct`` (the duplicate-free
collection: one real photo per place).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from samespace import cli, labelling
from samespace.devsets import builder, distinct, fetching, manifests, photo_sources


def _cmd_sources(args: argparse.Namespace) -> None:
    cache = Path(args.cache_dir)
    sources, kept = (distinct.load_tables()[0], distinct.KEPT) if args.distinct else (photo_sources.SOURCES, "photos")
    for source in sources:
        fetched = (fetching.photo_folder(source, cache, kept) / ".complete").is_file()
        photos = sum(len(p.shots) for p in source.places)
        print(
            f"{source.name:<20} {source.kind} {source.package}={source.version}  {source.split:<13} "
            f"{len(source.places):>3} places {photos:>3} photos  {'fetched' if fetched else 'not fetched'}"
        )
        print(f"    licence: {source.licence}")
        if source.note:
            print(f"    {source.note}")
    print(f"cache: {cache}")


def _cmd_build(args: argparse.Namespace) -> None:
    sources = photo_sources.sources_by_name(args.sources)
    summary = builder.build(args.out_dir, seed=args.seed, sources=sources, cache_dir=args.cache_dir)
    for split, counts in summary.items():
        print(f"{split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(Path(args.out_dir))


def _cmd_build_distinct(args: argparse.Namespace) -> None:
    sources, dropped = distinct.load_tables()
    counts = distinct.build_distinct(args.out_dir, sources, dropped, args.cache_dir, args.exclude_like)
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    print(Path(args.out_dir))


def _cmd_verify(args: argparse.Namespace) -> None:
    problems = manifests.verify(args.set_dir)
    for problem in problems:
        print(problem)
    if problems:
        raise photo_sources.RealPhotosError(f"{args.set_dir}: {len(problems)} file(s) differ from {manifests.MANIFEST}")
    print(f"{args.set_dir}: every file matches {manifests.MANIFEST}")


EXAMPLES = """examples:
  samespace devset sources                 # the Debian packages the set is made of, their licences
  samespace devset build data/real         # fetch them (apt) and write the set (seed 0)
  samespace devset verify data/real        # every file against the manifest's sha256
  samespace devset build-distinct data/distinct --exclude-like data/real   # one photo per place, no duplicates
"""


def main(argv: Sequence[str] | None = None, prog: str = "samespace devset") -> int:
    """``samespace devset build|build-distinct|sources|verify ...``: 0 on success, 2 with a one-line error."""
    parser = cli.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cache-dir",
        default=str(fetching.DEFAULT_CACHE),
        help=f"downloaded packages (default {fetching.DEFAULT_CACHE})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="fetch the sources and write the set")
    build_cmd.add_argument("out_dir", help="output folder, e.g. data/real")
    build_cmd.add_argument("--seed", type=int, default=0)
    build_cmd.add_argument("--sources", nargs="+", metavar="NAME", help="only these sources (default: all)")
    build_cmd.set_defaults(func=_cmd_build)
    sources_cmd = sub.add_parser("sources", help="list the sources, their licences and whether they are fetched")
    sources_cmd.add_argument("--distinct", action="store_true",
                             help="the sources of the duplicate-free collection (build-distinct) instead")
    sources_cmd.set_defaults(func=_cmd_sources)
    distinct_cmd = sub.add_parser("build-distinct", help="fetch the sources and write the duplicate-free collection")
    distinct_cmd.add_argument("out_dir", help="output folder, e.g. data/distinct")
    distinct_cmd.add_argument("--exclude-like", nargs="+", default=[], metavar="DIR",
                              help="refuse any photo that is the same picture (pHash) as an image under DIR")
    distinct_cmd.set_defaults(func=_cmd_build_distinct)
    verify_cmd = sub.add_parser("verify", help="check a built set's files against its manifest (sha256)")
    verify_cmd.add_argument("set_dir", help="the folder holding manifest.csv, e.g. data/real")
    verify_cmd.set_defaults(func=_cmd_verify)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return cli.run_reporting_errors(lambda: args.func(args), (labelling.DataError,), args.debug)


if __name__ == "__main__":
    sys.exit(main())
