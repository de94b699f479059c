"""``samespace embed`` (and ``python embed.py``, what embed.yaml runs on each slot): embed photos into a store.

    samespace embed PHOTOS_DIR [...] --store STORE.npz [--method relative|verified|... | --checkpoint DIR]
    torchrun --nproc_per_node 2 embed.py PHOTOS_DIR --store STORE.npz          # several processes, CPU (gloo)
    det experiment create embed.yaml .                                          # on a cluster (embed.yaml)

Then ``samespace find --embeddings STORE.npz`` groups the photos the store lists.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from samespace import cli, errors, interrupts, outputs, photo_files, scoring_methods, store_format

LOG_FORMAT = "%(levelname)s: [%(process)s] %(name)s: %(message)s"  # Determined's, so cluster logs read alike
EXAMPLES = """examples:
  samespace embed photos/ --store photos.npz                         # then: samespace find --embeddings photos.npz
  torchrun --nproc_per_node 2 embed.py photos/ --store photos.npz    # two processes, one share of the photos each
"""


def build_parser(prog: str = "embed.py") -> argparse.ArgumentParser:
    """The options of ``samespace embed``: the photos, the store, and the scorer (as ``samespace find``)."""
    parser = cli.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", metavar="PHOTOS_DIR", help="folders searched recursively")
    parser.add_argument("--store", "--output", dest="output", required=True, metavar="FILE",
                        help="the embedding store to create or extend (--output: the same, its former name)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--checkpoint", metavar="DIR", help="embed for the trained model in this checkpoint")
    how.add_argument(
        "--method", choices=scoring_methods.REFERENCE_METHODS,
        help="a reference method (default: calibrated, as samespace find)"
    )
    parser.add_argument("--backbone", choices=("mobilenet_v3_large", "efficientnet_lite0"))
    parser.add_argument("--backbone-weights", default="imagenet", metavar="imagenet|none|PATH")
    parser.add_argument("--batch-size", type=int, default=scoring_methods.DEFAULT_BATCH_SIZE, metavar="N")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cli.add_precision_option(parser)
    cli.add_decode_options(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a --store file that exists and was not written by SameSpace, is another "
                        "kind of SameSpace file, or a store of another method (never a photo)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def check_output(args: argparse.Namespace, size: int) -> None:
    """Refuse, before any work, a --store file (or a rank's part file) that is a photo, a folder, a link, a device
    or a file SameSpace did not write (outputs.check_outputs); raises outputs.OutputError."""
    from samespace import embedding_job, sharding

    output = Path(args.output)
    targets = [outputs.Target("--store", output, kind=outputs.STORE)]
    targets += [
        outputs.Target("--store", embedding_job.part_path(output, sharding.Shard(r, size)), kind=outputs.STORE)
        for r in range(size)
    ]
    outputs.check_outputs(targets, inputs=args.folders, overwrite=args.overwrite,
                          image_extensions=photo_files.readable_extensions())


def main(argv: Sequence[str] | None = None, prog: str = "embed.py") -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    from samespace import embedding_job, sharding  # after --help: they load torch

    if args.batch_size < 1:
        parser.error("--batch-size must be positive")
    args.threshold = None  # build_scorer's option; embedding needs no threshold
    try:
        for folder in args.folders:
            if not Path(folder).is_dir():
                raise errors.FindDuplicatesError(f"{folder}: not a directory")
        check_output(args, int(os.environ.get("WORLD_SIZE", "1")))
    except (errors.FindDuplicatesError, outputs.OutputError) as exc:
        if args.debug:
            raise
        print(f"error: {outputs.printable_name(str(exc), quote=False)}", file=sys.stderr)
        return cli.EXIT_ERROR
    distributed = embedding_job.start_process_group()
    shard = sharding.Shard()
    try:
        # SIGTERM (a cluster stopping the task) as Ctrl-C: each process saves what it embedded (kept_on_interrupt)
        with interrupts.terminate_as_interrupt(), cli.clean_warnings(), embedding_job.reports(distributed) as reporter:
            shard = sharding.current()
            output = embedding_job.run(args, reporter, shard)
    except (errors.FindDuplicatesError, store_format.StoreError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {outputs.printable_name(str(exc), quote=False)}", file=sys.stderr)
        return cli.EXIT_ERROR
    finally:
        import torch.distributed

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if shard.is_chief:
        print(output)
    return 0
