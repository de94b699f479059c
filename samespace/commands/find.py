"""``samespace find`` (and ``python find_duplicates.py``): the duplicate finder's command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from samespace import cli, errors, outputs, photo_files, result_formats, scoring_methods, store_format, store_identity

if TYPE_CHECKING:
    from samespace import embedding_store, finder, scorers
    from samespace.content_keys import StatEntry


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


# What each report holds: an existing SameSpace file of another kind is replaced only with --overwrite.
OUTPUT_FILE_KINDS = {"json": outputs.RESULT_JSON, "csv": outputs.PAIRS_CSV, "html": outputs.REVIEW_PAGE}


def check_output_paths(args: argparse.Namespace, store: Path | None = None) -> None:
    """Refuse, before any work, outputs that would replace a photo, a link, a device or a file we did not write
    (outputs.py): the reports (``-`` or ``/dev/stdout``: standard output) and the store file this run writes."""
    targets = [outputs.Target(f"--{o}", Path(getattr(args, o)), stream=True, kind=OUTPUT_FILE_KINDS[o])
               for o in ("json", "csv", "html") if getattr(args, o)]
    if store is not None:
        targets.append(outputs.Target("--store", store, kind=outputs.STORE))
    try:
        outputs.check_outputs(
            targets,
            inputs=[*args.folders, *(args.against or [])],
            overwrite=args.overwrite,
            input_files=[args.embeddings] if args.embeddings else [],
            image_extensions=photo_files.readable_extensions(),
        )
    except outputs.OutputError as exc:
        raise errors.FindDuplicatesError(str(exc)) from exc


def build_scorer(args: argparse.Namespace, device: str) -> tuple[scorers.PairScorer, float, str]:
    """The scorer the options ask for, its threshold, and where the threshold came from."""
    from samespace import scorer_choice

    return scorer_choice.choose_scorer(
        method=args.method, checkpoint=args.checkpoint, backbone=args.backbone,
        backbone_weights=args.backbone_weights, batch_size=args.batch_size, device=device, threshold=args.threshold,
        precision=args.precision)


EXAMPLES = """examples:
  samespace find photos/ --html report.html              # a page of the groups with thumbnails
  samespace find photos/ --json groups.json --csv pairs.csv
  samespace find new/ --against library/                  # only new photos that duplicate library photos
  samespace find photos/ --method phash --threshold 0.9  # a perceptual hash, stricter than its default
  samespace find photos/ --checkpoint checkpoints/<id>   # a model trained with model_def.py
  samespace find --embeddings photos.npz --json g.json   # the photos a store lists (samespace embed)
"""


def build_parser(prog: str = "find_duplicates.py") -> argparse.ArgumentParser:
    t, limits = scoring_methods.DEFAULT_THRESHOLDS, scoring_methods.EXHAUSTIVE_LIMITS
    parser = cli.ArgumentParser(
        prog=prog,
        description="Find duplicate photos of the same space (re-shot, cropped, edited) in folders of photos. "
        "Photos are only read, never modified, moved or deleted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.fill(
            "Default thresholds (a pair is a duplicate when its score >= threshold): model: the best-F1 threshold in "
            f"<checkpoint>/{scoring_methods.THRESHOLD_FILE} if present, else "
            f"{scoring_methods.MODEL_DEFAULT_THRESHOLD}; "
            f"whash {t['whash']}, phash {t['phash']}, cosine {t['cosine']} (best F1 on the generated sample set), "
            f"relative {t['relative']} and verified {t['verified']} (the best F1 of the groups, averaged over the "
            f"real-photo and generated training splits), calibrated {t['calibrated']} (a probability: the best F1 of "
            "the groups on training collections where 100, 30 and 10 % of places have duplicates); cosine, relative, "
            "verified and calibrated with "
            f"{scoring_methods.COSINE_BACKBONE} ImageNet weights. "
            f"Candidate pairs: every pair up to "
            f"{limits['model']:,} images for the model and {limits['cosine']:,} for the reference methods, else "
            f"each image's {scoring_methods.DEFAULT_TOP_K} nearest neighbours. "
            f"Exit status: 0 on success, {cli.EXIT_ERROR} on an error (no images, bad options).", width=100
        ) + "\n\n" + EXAMPLES,
    )
    parser.add_argument("folders", nargs="*", metavar="PHOTOS_DIR",
                        help="folders searched recursively for every image format Pillow reads (HEIC: pip install "
                        "'samespace[heif]')")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--checkpoint", metavar="DIR", help="score pairs with this trained model checkpoint")
    how.add_argument(
        "--method",
        choices=scoring_methods.REFERENCE_METHODS,
        help="score pairs with a reference method instead (default without --checkpoint: calibrated, the probability "
        "of the same space; relative with another --backbone / --backbone-weights)",
    )
    parser.add_argument("--threshold", type=float, metavar="T", help="duplicate when score >= T (default: see below)")
    parser.add_argument("--json", metavar="FILE", help="write groups, pairs, skipped files and the summary as JSON")
    parser.add_argument("--csv", metavar="FILE",
                        help="write every duplicate pair as CSV (group,path1,path2,score,tier)")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained review page with thumbnails")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that exist and were not written by SameSpace, or hold another kind of SameSpace "
        "file (a store, a result, a page, an undo manifest), or a --store of another method; photos are never "
        "replaced",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=scoring_methods.DEFAULT_BATCH_SIZE,
        metavar="N",
        help="images per batch (default: 64)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    cli.add_precision_option(parser)
    search = parser.add_mutually_exclusive_group()
    search.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help=f"score each image's K nearest neighbours only (default, with K={scoring_methods.DEFAULT_TOP_K}, above "
        f"{scoring_methods.EXHAUSTIVE_LIMITS['model']:,} images for the model, "
        f"{scoring_methods.EXHAUSTIVE_LIMITS['cosine']:,} for the "
        "reference methods)",
    )
    search.add_argument("--exhaustive", action="store_true", help="score every pair, however many images")
    parser.add_argument(
        "--backbone",
        choices=("mobilenet_v3_large", "efficientnet_lite0"),
        help=f"backbone of the cosine and relative methods (default: {scoring_methods.COSINE_BACKBONE})",
    )
    parser.add_argument(
        "--backbone-weights",
        default="imagenet",
        metavar="imagenet|none|PATH",
        help="weights of the cosine / relative backbone (default: imagenet)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli.add_decode_options(parser)
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"list every skipped file at the end (default: the first {result_formats.MAX_LISTED_SKIPPED} and a count)",
    )
    parser.add_argument(
        "--include-hidden",
        action="store_true",
        help="also scan hidden files and folders and thumbnail folders (.thumbnails, ._IMG.JPG, @eaDir, __MACOSX), "
        "which are left out and counted by default",
    )
    add_store_options(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """The options of the embedding store, approximate search and library queries."""
    from samespace import embedding_store, neighbours

    parser.add_argument(
        "--against",
        nargs="+",
        metavar="LIBRARY_DIR",
        help="report only duplicates between the photos in PHOTOS_DIR (new) and these library folders, one "
        "group per new photo; the library's embeddings come from the store",
    )
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--no-cache", action="store_true", help="do not read or write an embedding store")
    cache.add_argument(
        "--store",
        metavar="FILE",
        help="the embedding store file (default: one per scorer in the user cache folder, "
        f"{embedding_store.default_store_dir()})",
    )
    cache.add_argument(
        "--embeddings",
        metavar="FILE",
        help="group from this store (e.g. written by embed.py); without PHOTOS_DIR, every photo it lists, scored "
        "from its embeddings (only the photos of reported pairs are opened, for their match tier). It must exist and "
        "match the scorer. It is only read: photos it lacks are embedded for this run alone (use --store FILE to add "
        "them to it)",
    )
    approximate = parser.add_mutually_exclusive_group()
    approximate.add_argument(
        "--approximate",
        action="store_const",
        const=True,
        dest="approximate",
        help="approximate nearest-neighbour candidate search (faiss HNSW; the default above "
        f"{neighbours.EXACT_LIMIT:,} images)",
    )
    approximate.add_argument(
        "--exact", action="store_const", const=False, dest="approximate", help="exact candidate search, any size"
    )


def open_store_for(
    args: argparse.Namespace, scorer: scorers.PairScorer
) -> tuple[embedding_store.EmbeddingStore | None, Path | None]:
    """The embedding store the options ask for (None with --no-cache) and its file."""
    from samespace import embedding_store

    if args.no_cache:
        return None, None
    fingerprint = store_identity.scorer_fingerprint(scorer)
    path = Path(args.embeddings or args.store or embedding_store.default_store_path(scorer.name, fingerprint))
    try:
        if not args.embeddings:  # --embeddings is an input, never rewritten
            store_format.check_replaceable(path, scorer.name, args.overwrite)
        store = embedding_store.open_store(path, fingerprint, scorer.name, scorer.fields, strict=bool(args.embeddings))
    except store_format.StoreError as exc:
        raise errors.FindDuplicatesError(str(exc)) from exc
    return store, path


def save_store(store: embedding_store.EmbeddingStore | None, path: Path | None) -> bool:
    """Write the store when this run changed it; whether it was written. A store that cannot be written is a
    warning, not a failure (a link, a device or a FIFO at the store's path is never replaced: outputs.atomic_write)."""
    if store is None or path is None or not store.changed:
        return False
    try:
        store.save(path)
    except (OSError, outputs.OutputError) as exc:
        print(f"warning: {path}: cannot write the embedding store ({exc})", file=sys.stderr)
        return False
    return True


@contextlib.contextmanager
def kept_on_interrupt(store: embedding_store.EmbeddingStore | None, path: Path | None) -> Iterator[None]:
    """On Ctrl-C in the block, save the store's rows embedded so far (save_store), so that the next run goes on
    from them instead of decoding every photo again; then the interrupt goes on."""
    try:
        yield
    except KeyboardInterrupt:
        if save_store(store, path) and len(store):  # (a store of content keys only still spares their hashing)
            print(f"kept {cli.counted(len(store), 'embedding')} in {outputs.printable_name(str(path))}: the next "
                  "run goes on from them", file=sys.stderr)
        raise


# What each output file is, for the closing lines ("" : its name says it).
OUTPUT_KINDS = {"json": "", "csv": "", "html": "HTML review page"}


def run(
    args: argparse.Namespace, scorer: scorers.PairScorer, threshold: float, store: embedding_store.EmbeddingStore | None
) -> finder.Result:
    """The run the options ask for: folders, new photos --against a library, or the photos a store lists."""
    from samespace import finder

    options = dict(top_k=args.top_k, exhaustive=args.exhaustive, batch_size=args.batch_size,
                   progress=not args.no_progress, store=store, approximate=args.approximate,
                   decode_workers=args.workers, decode_pool=args.decode_pool, include_hidden=args.include_hidden)
    if args.against:
        return finder.find_against(args.folders, args.against, scorer, threshold, **options)
    if not args.folders:  # --embeddings alone: the photos the store lists
        listed = store.listed_paths() if store is not None else []
        if not listed:
            raise errors.FindDuplicatesError(f"{args.embeddings}: the store lists no photos")
        entries = store.stat_entries()  # type: ignore[union-attr]
        listed = photos_as_embedded(listed, entries, args.embeddings)
        return finder.find_duplicates(photo_folders(listed), scorer, threshold, paths=[Path(p) for p in listed],
                                      keys=[entries[p].key for p in listed], **options)
    return finder.find_duplicates(args.folders, scorer, threshold, **options)


def photos_as_embedded(listed: Sequence[str], entries: dict[str, StatEntry], store: str | Path) -> list[str]:
    """The photos a store lists that may be grouped from their stored embeddings alone (``--embeddings`` without
    PHOTOS_DIR): a photo edited since (another size or modification time) is left out, and so is one no longer at
    its path (moved or deleted) while others are; when none is here, the store speaks for all of them (photos
    embedded on another machine). Each kind left out is one warning."""
    changed, missing = [], []
    for path in listed:
        try:
            info = os.stat(path)
        except OSError:
            missing.append(path)
            continue
        if (info.st_size, info.st_mtime_ns) != (entries[path].size, entries[path].mtime_ns):
            changed.append(path)
    if len(missing) == len(listed):
        return list(listed)
    for left_out, why in ((missing, "not found at the listed path (moved or deleted)"),
                          (changed, "edited since the store embedded it (give the folders to embed again)")):
        if left_out:
            warnings.warn(f"{store}: {cli.counted(len(left_out), 'photo')} left out, {why}", stacklevel=2)
    gone = set(missing) | set(changed)
    kept = [path for path in listed if path not in gone]
    if not kept:
        raise errors.FindDuplicatesError(f"{store}: no photo it lists is here as it was embedded")
    return kept


def photo_folders(paths: Sequence[str]) -> list[str]:
    """The folders that hold ``paths`` (a store's photos), for summary.folders: samespace act acts only on photos
    under them and refuses a --move-to inside them. Their common folder, keeping the photos' paths below it; when
    that is a file system root (photos on several disks), each top-most folder that holds a photo instead."""
    parents = sorted({os.path.dirname(os.path.abspath(p)) for p in paths})
    try:
        common = Path(os.path.commonpath(parents))
    except ValueError:  # on different drives
        common = Path(os.path.abspath(os.sep))
    if common != common.parent:
        return [str(common)]
    return [p for k, p in enumerate(parents) if not any(Path(p).is_relative_to(q) for q in parents[:k])]


def check_threshold(threshold: float | None, method: str) -> None:
    """--threshold must be a number in the method's score range (scoring_methods.SCORE_RANGES), [0, 1] by default."""
    if threshold is None:
        return
    low, high = scoring_methods.SCORE_RANGES.get(method, (0.0, 1.0))
    if not (low <= threshold <= high):  # also refuses nan
        raise errors.FindDuplicatesError(
            f"--threshold {threshold:g}: expected a number in [{low:g}, {high:g}] for {method} scores")


def main(argv: Sequence[str] | None = None, prog: str = "find_duplicates.py") -> int:
    """The command line. Bad input is one ``error:`` line on stderr and exit status 2 (``--debug``: the traceback)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if (args.backbone or args.backbone_weights != "imagenet") and (
        args.method or "relative"
    ) not in scoring_methods.BACKBONE_METHODS:
        parser.error("--backbone / --backbone-weights apply to --method cosine, relative, verified or calibrated")
    if args.checkpoint and (args.backbone or args.backbone_weights != "imagenet"):
        parser.error("--backbone / --backbone-weights apply to --method cosine, relative, verified or calibrated (a "
                     "checkpoint "
                     "brings its own)")
    for option, value in (("--batch-size", args.batch_size), ("--top-k", args.top_k)):
        if value is not None and value < 1:
            parser.error(f"{option} {value}: must be positive")
    if not args.folders and not args.embeddings:
        parser.error("give PHOTOS_DIR (or --embeddings FILE)")
    if args.against and not args.folders:
        parser.error("--against needs the new photos' folders (PHOTOS_DIR)")
    if args.approximate and args.exhaustive:
        parser.error("--approximate and --exhaustive exclude each other")
    try:
        with cli.clean_warnings():
            return _run(args)
    except (errors.FindDuplicatesError, ValueError, OSError) as exc:  # OSError: e.g. the disk filled up while writing
        if args.debug:
            raise
        print(f"error: {outputs.printable_name(str(exc), quote=False)}", file=sys.stderr)
        return cli.EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    from samespace import report, scorer_choice

    method = args.method or scorer_choice.default_method(args.backbone, args.backbone_weights)
    check_threshold(args.threshold, "model" if args.checkpoint else method)
    check_output_paths(args, Path(args.store) if args.store else None)
    for folder in [*args.folders, *(args.against or [])]:  # fail fast, before loading a model
        if not Path(folder).is_dir():
            raise errors.FindDuplicatesError(f"{folder}: not a directory")
    if args.checkpoint:  # the folder and its threshold file, read strictly here, before the model loads
        from samespace import checkpoint_loading

        checkpoint_loading.check_folder(args.checkpoint)
        checkpoint_loading.read_threshold(args.checkpoint)
    scorer, threshold, source = build_scorer(args, scorer_choice.device_for(args.device))
    store, store_path = open_store_for(args, scorer)
    if store is not None and not args.embeddings:  # --embeddings is an input: never rewritten
        store.save_to = store_path
    with kept_on_interrupt(store, None if args.embeddings else store_path):
        result = run(args, scorer, threshold, store)
    saved = save_store(store, None if args.embeddings else store_path)  # --embeddings is an input: never rewritten
    saved = saved or (store is not None and store.saved and not args.embeddings)  # saved early (run_memory)
    result.summary["store"] = str(store_path) if store_path else None
    result.summary["threshold_source"] = source
    if scorer.name in scoring_methods.BACKBONE_METHODS:
        result.summary["backbone"] = args.backbone or scoring_methods.COSINE_BACKBONE
        result.summary["backbone_weights"] = args.backbone_weights
    if args.checkpoint:
        result.summary["checkpoint"] = str(args.checkpoint)
    document = result.to_dict()
    if args.json:
        outputs.atomic_write(args.json, json.dumps(document, indent=1) + "\n")
    if args.csv:
        outputs.atomic_write(args.csv, result_formats.csv_text(document))
    if args.html:
        from samespace import report

        outputs.atomic_write(args.html, report.render_html(document))
    # An output streamed to standard output keeps it for itself: the text goes to stderr then.
    streamed = any(outputs.is_stdout(o) for o in (args.json, args.csv, args.html) if o)
    console = sys.stderr if streamed else sys.stdout
    listing = not (args.json or args.csv or args.html)
    if listing:
        text = result_formats.groups_text(document)
        if text:
            print(text, file=console)
    # Then where the files went and which photos were skipped (the groups listing already names each one);
    # the summary line stays last.
    written = [(getattr(args, o), what) for o, what in OUTPUT_KINDS.items()
               if getattr(args, o) and not outputs.is_stdout(getattr(args, o))]
    saved_store = (str(store_path), len(store.listed_paths())) if saved and store is not None and store_path else None
    for line in result_formats.closing_lines(written, saved_store, document["skipped"], verbose=args.verbose,
                                             list_skipped=not listing):
        print(line, file=console)
    if result.summary.get("hidden"):
        print(result_formats.hidden_line(result.summary["hidden"]), file=console)
    print(result_formats.summary_line(result.summary), file=console)
    return 0
