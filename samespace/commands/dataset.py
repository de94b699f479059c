"""The dataset commands: count a split's pairs, write the generated sample set, download the Kaggle dataset."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from samespace import cli, kaggle_data, labelling, outputs, pair_dataset, pair_sampling
from samespace.devsets import sample_set

EXAMPLES = """examples:
  samespace sample data/sample                      # the generated sample set (seed 0)
  samespace stats "data/sample/Training Data"       # images, groups and pairs of one split
  samespace download --path data                    # the Kaggle dataset (needs Kaggle credentials)
"""


def run_stats(args: argparse.Namespace) -> None:
    # Counts need only the hashes: photos are decoded one at a time and their pixels dropped.
    dataset = pair_dataset.DuplicateImageDataset(args.dir, pairing=args.pairing, progress=not args.json,
                                                 keep_images=False)
    summary = dataset.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        width = max(map(len, summary))
        for key, value in summary.items():
            print(f"{key:<{width}}  {value:>10,}")
        for message in dataset.skipped:
            print(f"skipped: {outputs.printable_name(message, quote=False)}")  # a name with a newline stays one line


def run_sample(args: argparse.Namespace) -> None:
    try:
        out = sample_set.write_sample_dataset(args.out_dir, seed=args.seed)
    except OSError as exc:  # a full disk names no file: name the output folder
        raise outputs.with_path(exc, args.out_dir) from exc
    print(out)


def run_download(args: argparse.Namespace) -> None:
    if not all((kaggle_data.dataset_root(args.path) / split).is_dir() for split in labelling.SPLITS):
        try:  # before asking Kaggle for anything
            outputs.check_outputs([outputs.Target("--path", Path(args.path), is_dir=True)])
        except outputs.OutputError as exc:
            raise labelling.DataError(str(exc)) from exc
    print(kaggle_data.download_data(args.path))


def build_parser(prog: str = "samespace") -> cli.ArgumentParser:
    """The ``stats``, ``sample`` and ``download`` subcommands (also ``python data.py ...``)."""
    parser = cli.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="count images, groups and pairs of one split directory", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    stats.add_argument("dir", help="a split directory, e.g. 'data/Airbnb Data/Training Data'")
    stats.add_argument("--pairing", choices=pair_sampling.PAIRINGS, default="faithful")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=run_stats)
    sample = sub.add_parser("sample", help="write the generated sample dataset", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sample.add_argument("out_dir")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=run_sample)
    download = sub.add_parser("download", help="download the Kaggle dataset", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    download.add_argument("--path", default="data", help="folder to hold 'Airbnb Data/' (default: data)")
    download.set_defaults(func=run_download)
    for command in (stats, sample, download):
        command.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "samespace") -> int:
    """Run one of ``stats``, ``sample``, ``download``; 0 on success, 2 with a one-line error."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # OSError: the disk filled up or a folder vanished while writing
    return cli.run_reporting_errors(lambda: args.func(args), (labelling.DataError, OSError), args.debug)

