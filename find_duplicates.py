"""Find duplicate photos of the same space in one or more folders.

    python find_duplicates.py PHOTOS_DIR [PHOTOS_DIR ...] [--checkpoint DIR | --method whash|phash|cosine]
        [--threshold T] [--json FILE] [--csv FILE] [--html FILE] [--top-k K | --exhaustive] ...

Every image under the folders (recursively, any format PIL can read) is decoded once with data.load_image,
embedded once (backbone features, the Siamese head's projections, or a hash), and dropped; pairs are scored
from the embeddings (scoring.py) and duplicate groups are the connected components of the pairs scoring at
or above the threshold. Photos are only ever opened for reading.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile
from tqdm import tqdm

import blank
import cli
import data
import outputs
import scoring

EXIT_ERROR = 2
DEFAULT_BATCH_SIZE = 64


class FindDuplicatesError(RuntimeError):
    """A run that cannot proceed (no images, bad option, unreadable checkpoint), with the reason."""


# --------------------------------------------------------------------------------------------
# Finding and decoding photos
# --------------------------------------------------------------------------------------------


def readable_extensions() -> frozenset[str]:
    """File extensions of every format PIL can open and decode (its registered extensions, minus stubs).

    Stub formats (BUFR, GRIB, HDF5, WMF: identified but not decoded without extra plugins) and MPEG (only
    identified) are left out.
    """
    Image.init()
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(fmt, (None,))[0]
        if factory is None or fmt == "MPEG":
            continue
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        out.add(ext.lower())
    return frozenset(out)


# Photo formats a camera or phone writes that PIL may lack a decoder for (e.g. .heic without pillow-heif):
# such files are listed as skipped with the reason instead of being left out silently.
PHOTO_EXTENSIONS = frozenset({".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf",
                              ".rw2", ".raf", ".jp2", ".webp", ".tif", ".tiff"})
# A group with more photos than this is reported with a warning: usually a threshold too low for the collection
# or a burst of near-identical frames; its pairs are all kept (memory grows with the pairs kept, not all pairs).
MAX_GROUP_SIZE = 500


def image_files(folders: Sequence[str | Path], skipped: list[dict[str, str]] | None = None) -> list[Path]:
    """Image files under each folder (recursive, symlinked folders not followed), folder by folder in the
    given order, each sorted by relative POSIX path; a file reached twice (overlapping folders) is kept once.

    Folders that cannot be listed and photos in a format no installed decoder reads are appended to ``skipped``
    (``{"path", "reason"}``) when it is given. Raises FindDuplicatesError naming a folder that does not exist,
    or all the folders when none holds an image.
    """
    extensions = readable_extensions()
    undecodable = PHOTO_EXTENSIONS - extensions
    seen: set[Path] = set()
    found: list[Path] = []
    for folder in folders:
        root = Path(folder)
        unreadable: list[tuple[Path, str]] = []
        try:
            files = data.find_images(root, extensions=extensions | undecodable, unreadable=unreadable)
        except data.DataError as exc:
            raise FindDuplicatesError(str(exc)) from exc
        if skipped is not None:
            skipped.extend({"path": str(p), "reason": reason} for p, reason in unreadable)
            skipped.extend(
                {"path": str(p), "reason": f"no decoder for {p.suffix.lower()} installed (e.g. pillow-heif for .heic)"}
                for p in files if p.suffix.lower() in undecodable
            )
        files = [p for p in files if p.suffix.lower() not in undecodable]
        if not files:
            warnings.warn(f"{root}: no image files", stacklevel=2)
        for path in files:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    if not found:
        names = ", ".join(str(f) for f in folders)
        raise FindDuplicatesError(
            f"no image files found in {names} (looked recursively for {len(extensions)} extensions PIL reads, "
            "e.g. .jpg .jpeg .png .webp .tif .bmp .gif)"
        )
    return found


def _decode(path: Path) -> np.ndarray | str:
    """The 256x256 uint8 image, or the reason it cannot be read (data.load_image turns every decoder failure into
    UnreadableImageError, so a file never stops the run and every reader gives the same reason)."""
    try:
        return data.load_image(path)
    except data.UnreadableImageError as exc:
        message = str(exc)
        prefix = f"{path}: "
        return message[len(prefix) :] if message.startswith(prefix) else message


@dataclass
class DecodedBatch:
    """One batch of decoded images: the indices (into the path list) that decoded, and the ones that did not."""

    indices: list[int]
    images: np.ndarray
    skipped: list[tuple[int, str]]


def decoded_batches(paths: Sequence[Path], batch_size: int, workers: int = 2) -> Iterator[DecodedBatch]:
    """Decode ``paths`` batch by batch in ``workers`` threads, the next batch while the caller uses this one.

    At most two batches of decoded images exist at a time.
    """

    def submit(start: int) -> list[Future[np.ndarray | str]]:
        return [pool.submit(_decode, p) for p in paths[start : start + batch_size]]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = submit(0)
        for start in range(0, len(paths), batch_size):
            results = [f.result() for f in pending]
            pending = submit(start + batch_size) if start + batch_size < len(paths) else []
            ok = [(start + k, r) for k, r in enumerate(results) if isinstance(r, np.ndarray)]
            bad = [(start + k, r) for k, r in enumerate(results) if isinstance(r, str)]
            images = (
                np.stack([r for _, r in ok]) if ok else np.zeros((0, data.IMAGE_SIZE, data.IMAGE_SIZE, 3), np.uint8)
            )
            yield DecodedBatch([k for k, _ in ok], images, bad)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    """A finished run: the scored images, the skipped files, duplicate pairs (indices into ``paths``) and groups."""

    paths: list[str]
    skipped: list[dict[str, str]]
    left: np.ndarray
    right: np.ndarray
    scores: np.ndarray
    groups: list[np.ndarray]
    summary: dict[str, Any] = field(default_factory=dict)
    blank: list[str] = field(default_factory=list)  # photos with almost no detail (blank.py), not scored

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: groups (members, pairs), every duplicate pair, skipped files, summary."""
        pairs = [[self.paths[i], self.paths[j], round(float(s), 6)] for i, j, s in self._by_score()]
        group_of = np.full(len(self.paths), -1, np.int64)
        for g, members in enumerate(self.groups):
            group_of[members] = g
        group_pairs: list[list[list[Any]]] = [[] for _ in self.groups]
        for (i, _, _), pair in zip(self._by_score(), pairs, strict=True):
            group_pairs[group_of[i]].append(pair)
        groups = [
            {"members": [self.paths[k] for k in members], "pairs": group_pairs[g]}
            for g, members in enumerate(self.groups)
        ]
        return {"groups": groups, "pairs": pairs, "blank": self.blank, "skipped": self.skipped,
                "summary": self.summary}

    def _by_score(self) -> list[tuple[int, int, float]]:
        order = np.lexsort((self.right, self.left, -self.scores))
        return [(int(self.left[k]), int(self.right[k]), float(self.scores[k])) for k in order]


def find_duplicates(
    folders: Sequence[str | Path],
    scorer: scoring.PairScorer,
    threshold: float,
    top_k: int | None = None,
    exhaustive: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    decode_workers: int = 2,
) -> Result:
    """Find the duplicate groups among the photos under ``folders`` with a fresh ``scorer``.

    Streams the photos: decode a batch, embed it, drop it. ``top_k`` / ``exhaustive`` choose the candidate
    pairs (see scoring.find_matches). The summary holds counts and the time spent in each stage.
    """
    t0 = time.perf_counter()
    skipped: list[dict[str, str]] = []
    paths = image_files(folders, skipped)
    timings = {"find": time.perf_counter() - t0, "decode_wait": 0.0, "embed": 0.0}
    kept: list[int] = []
    flat: list[int] = []
    bar = tqdm(total=len(paths), desc=f"embed ({scorer.name})", unit="img", disable=not progress, file=sys.stderr)
    batches = decoded_batches(paths, batch_size, decode_workers)
    while True:
        t = time.perf_counter()
        batch = next(batches, None)
        timings["decode_wait"] += time.perf_counter() - t
        if batch is None:
            break
        t = time.perf_counter()
        is_flat = blank.is_blank(batch.images)
        if not is_flat.all():  # a batch of blank photos only has nothing to embed
            scorer.add(batch.images[~is_flat])
        timings["embed"] += time.perf_counter() - t
        kept.extend(k for k, f in zip(batch.indices, is_flat, strict=True) if not f)
        flat.extend(k for k, f in zip(batch.indices, is_flat, strict=True) if f)
        skipped.extend({"path": str(paths[k]), "reason": reason} for k, reason in batch.skipped)
        bar.update(len(batch.indices) + len(batch.skipped))
        del batch
    bar.close()
    if not kept and not flat:
        raise FindDuplicatesError(
            f"none of the {len(paths)} image files in {', '.join(str(f) for f in folders)} could be read: "
            + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
            + (" ..." if len(skipped) > 5 else "")
        )
    t = time.perf_counter()
    if kept:
        scorer.finish()
        left, right, scores, n_scored, candidates = scoring.find_matches(scorer, threshold, top_k, exhaustive)
    else:  # every readable photo is blank
        left, right, scores, n_scored, candidates = (np.zeros(0, np.int64),) * 2 + (np.zeros(0),) + (0, "none")
    left, right, scores = _with_identical_blanks(paths, kept, flat, left, right, scores)
    timings["pairs"] = time.perf_counter() - t
    t = time.perf_counter()
    groups = scoring.connected_groups(len(kept) + len(flat), left, right)
    timings["group"] = time.perf_counter() - t
    _warn_large_groups(groups)
    seconds = time.perf_counter() - t0
    summary = {
        "folders": [str(f) for f in folders],
        "method": scorer.name,
        "threshold": threshold,
        "candidates": candidates,
        "files": len(paths),
        "images": len(kept) + len(flat),
        "blank": len(flat),
        "skipped": len(skipped),
        "pairs_scored": int(n_scored),
        "duplicate_pairs": len(left),
        "groups": len(groups),
        "images_in_groups": int(sum(len(g) for g in groups)),
        "seconds": round(seconds, 3),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    ordered = [str(paths[k]) for k in (*kept, *flat)]  # blank photos after the scored ones (see _with_identical_blanks)
    return Result(ordered, skipped, left, right, scores, groups, summary, [str(paths[k]) for k in flat])


def _with_identical_blanks(
    paths: Sequence[Path], kept: Sequence[int], flat: Sequence[int], left: np.ndarray, right: np.ndarray,
    scores: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add the pairs of byte-identical blank photos (score 1.0) to the scored pairs.

    Blank photos are numbered after the scored ones (``len(kept) + k``); only identical bytes pair them, since
    every method scores any two flat images about 1.0.
    """
    extra = []
    for members in blank.identical_groups([paths[k] for k in flat]):
        first = len(kept) + members[0]
        extra += [(first, len(kept) + m) for m in members[1:]]
    if not extra:
        return left, right, scores
    pairs = np.array(extra, np.int64)
    return (np.concatenate([left, pairs[:, 0]]), np.concatenate([right, pairs[:, 1]]),
            np.concatenate([scores, np.ones(len(pairs))]))


def _warn_large_groups(groups: Sequence[np.ndarray]) -> None:
    """One warning per group above MAX_GROUP_SIZE photos (the threshold is likely too low for the collection)."""
    for g, members in enumerate(groups, 1):
        if len(members) > MAX_GROUP_SIZE:
            warnings.warn(
                f"group {g} has {len(members):,} photos (more than {MAX_GROUP_SIZE}): the threshold is likely too "
                "low for these photos, or they are a burst of near-identical frames; consider a higher --threshold",
                stacklevel=3,
            )


def summary_line(summary: dict[str, Any]) -> str:
    """One line: images, blank, skipped, pairs scored, groups, seconds (and the method and threshold)."""
    return (
        f"{summary['images']:,} images, "
        + (f"{summary['blank']:,} blank, " if summary.get("blank") else "")
        + f"{summary['skipped']:,} skipped, "
        f"{summary['pairs_scored']:,} pairs scored "
        f"({summary['candidates']}), {summary['duplicate_pairs']:,} duplicate pairs in {summary['groups']:,} groups, "
        f"{summary['seconds']:.1f} s [{summary['method']}, threshold {summary['threshold']:g}]"
    )


def groups_text(document: dict[str, Any]) -> str:
    """The groups as plain text: one block per group, members then pair scores; then blank and skipped photos.

    A name with a new line, another control character or bytes that are not UTF-8 is quoted with backslash
    escapes (outputs.printable_name), so every line is one photo.
    """
    name = outputs.printable_name
    lines = []
    for g, group in enumerate(document["groups"], 1):
        lines.append(f"group {g} ({len(group['members'])} photos)")
        lines.extend(f"  {name(m)}" for m in group["members"])
        lines.extend(f"    {s:.4f}  {name(a)}  ~  {name(b)}" for a, b, s in group["pairs"])
    for path in document.get("blank", []):
        lines.append(f"blank {name(path)}")
    for s in document["skipped"]:
        lines.append(f"skipped {name(s['path'])}: {outputs.printable_name(s['reason'], quote=False)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def csv_text(document: dict[str, Any]) -> str:
    """Every duplicate pair as CSV: group (1-based), path1, path2, score."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "path1", "path2", "score"])
    for g, group in enumerate(document["groups"], 1):
        for a, b, s in group["pairs"]:
            writer.writerow([g, a, b, f"{s:.6f}"])
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def check_output_paths(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs that would replace a photo or a file we did not write (outputs.py)."""
    targets = [outputs.Target(f"--{o}", Path(getattr(args, o))) for o in ("json", "csv", "html") if getattr(args, o)]
    try:
        outputs.check_outputs(
            targets, inputs=args.folders, overwrite=args.overwrite, image_extensions=readable_extensions()
        )
    except outputs.OutputError as exc:
        raise FindDuplicatesError(str(exc)) from exc


def _device(name: str) -> str:
    from model import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise FindDuplicatesError(str(exc)) from exc


def build_scorer(args: argparse.Namespace, device: str) -> tuple[scoring.PairScorer, float, str]:
    """The scorer the options ask for, its threshold, and where the threshold came from."""
    method = "model" if args.checkpoint else (args.method or "cosine")
    if method == "model":
        if not Path(args.checkpoint).is_dir():
            raise FindDuplicatesError(f"{args.checkpoint}: checkpoint folder not found")
        from model_def import load_model

        model = load_model(args.checkpoint, device=device)  # a CheckpointError (ValueError) names the folder
        threshold, source = scoring.read_model_threshold(args.checkpoint)
        scorer: scoring.PairScorer = scoring.ModelScorer(model, batch_size=args.batch_size, device=device)
    elif method == "cosine":
        from model import BackboneWeightsError, build_feature_extractor

        backbone = args.backbone or scoring.COSINE_BACKBONE
        try:
            extractor = build_feature_extractor(backbone, args.backbone_weights).to(device)
        except BackboneWeightsError as exc:
            raise FindDuplicatesError(str(exc)) from exc
        scorer = scoring.CosineScorer(extractor, batch_size=args.batch_size, device=device)
        threshold, source = scoring.DEFAULT_THRESHOLDS["cosine"], f"calibrated default ({scoring.COSINE_BACKBONE})"
        if (backbone, args.backbone_weights) != (scoring.COSINE_BACKBONE, "imagenet") and args.threshold is None:
            print(
                f"warning: the default cosine threshold {threshold} was calibrated with {scoring.COSINE_BACKBONE} "
                f"ImageNet weights, not {backbone} / {args.backbone_weights}; consider --threshold",
                file=sys.stderr,
            )
            source = f"calibrated for {scoring.COSINE_BACKBONE} imagenet, used with {backbone} {args.backbone_weights}"
    else:
        scorer = scoring.HashScorer(method)
        threshold, source = scoring.DEFAULT_THRESHOLDS[method], "calibrated default"
    if args.threshold is not None:
        threshold, source = args.threshold, "--threshold"
    return scorer, threshold, source


def build_parser() -> argparse.ArgumentParser:
    t, limits = scoring.DEFAULT_THRESHOLDS, scoring.EXHAUSTIVE_LIMITS
    parser = cli.ArgumentParser(
        prog="find_duplicates.py",
        description="Find duplicate photos of the same space (re-shot, cropped, edited) in folders of photos. "
        "Photos are only read, never modified, moved or deleted.",
        epilog=(
            "Default thresholds (a pair is a duplicate when its score >= threshold): model: the best-F1 threshold in "
            f"<checkpoint>/{scoring.THRESHOLD_FILE} if present, else {scoring.MODEL_DEFAULT_THRESHOLD}; "
            f"whash {t['whash']}, phash {t['phash']}, cosine {t['cosine']} (best F1 on the generated sample set; "
            f"cosine with {scoring.COSINE_BACKBONE} ImageNet weights). Candidate pairs: every pair up to "
            f"{limits['model']:,} images for the model and {limits['cosine']:,} for the reference methods, else "
            f"each image's {scoring.DEFAULT_TOP_K} nearest neighbours. "
            f"Exit status: 0 on success, {EXIT_ERROR} on an error (no images, bad options)."
        ),
    )
    parser.add_argument("folders", nargs="+", metavar="PHOTOS_DIR", help="folders searched recursively")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--checkpoint", metavar="DIR", help="score pairs with this trained model checkpoint")
    how.add_argument(
        "--method",
        choices=scoring.REFERENCE_METHODS,
        help="score pairs with a reference method instead (default without --checkpoint: cosine)",
    )
    parser.add_argument("--threshold", type=float, metavar="T", help="duplicate when score >= T (default: see below)")
    parser.add_argument("--json", metavar="FILE", help="write groups, pairs, skipped files and the summary as JSON")
    parser.add_argument("--csv", metavar="FILE", help="write every duplicate pair as CSV (group,path1,path2,score)")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained review page with thumbnails")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that exist and were not written by SameSpace (photos are never replaced)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N", help="images per batch (default: 64)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    search = parser.add_mutually_exclusive_group()
    search.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help=f"score each image's K nearest neighbours only (default, with K={scoring.DEFAULT_TOP_K}, above "
        f"{scoring.EXHAUSTIVE_LIMITS['model']:,} images for the model, {scoring.EXHAUSTIVE_LIMITS['cosine']:,} for the "
        "reference methods)",
    )
    search.add_argument("--exhaustive", action="store_true", help="score every pair, however many images")
    parser.add_argument(
        "--backbone",
        choices=("mobilenet_v3_large", "efficientnet_lite0"),
        help=f"backbone of the cosine method (default: {scoring.COSINE_BACKBONE})",
    )
    parser.add_argument(
        "--backbone-weights",
        default="imagenet",
        metavar="imagenet|none|PATH",
        help="weights of the cosine backbone (default: imagenet)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def check_threshold(threshold: float | None, method: str) -> None:
    """--threshold must be a number in the method's score range: [-1, 1] for cosine, [0, 1] otherwise."""
    if threshold is None:
        return
    low = -1.0 if method == "cosine" else 0.0
    if not (low <= threshold <= 1.0):  # also refuses nan
        raise FindDuplicatesError(f"--threshold {threshold:g}: expected a number in [{low:g}, 1] for {method} scores")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Bad input is one ``error:`` line on stderr and exit status 2 (``--debug``: the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.backbone or args.backbone_weights != "imagenet") and (args.method or "cosine") != "cosine":
        parser.error("--backbone / --backbone-weights apply to --method cosine")
    if args.checkpoint and (args.backbone or args.backbone_weights != "imagenet"):
        parser.error("--backbone / --backbone-weights apply to --method cosine (a checkpoint brings its own)")
    if args.batch_size < 1 or (args.top_k is not None and args.top_k < 1):
        parser.error("--batch-size and --top-k must be positive")
    try:
        with data.clean_warnings():
            return _run(args)
    except (FindDuplicatesError, ValueError, OSError) as exc:  # OSError: e.g. the disk filled up while writing
        if args.debug:
            raise
        print(f"error: {outputs.printable_name(str(exc), quote=False)}", file=sys.stderr)
        return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    check_threshold(args.threshold, "model" if args.checkpoint else (args.method or "cosine"))
    check_output_paths(args)
    for folder in args.folders:  # fail fast, before loading a model
        if not Path(folder).is_dir():
            raise FindDuplicatesError(f"{folder}: not a directory")
    scorer, threshold, source = build_scorer(args, _device(args.device))
    result = find_duplicates(
        args.folders,
        scorer,
        threshold,
        top_k=args.top_k,
        exhaustive=args.exhaustive,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    result.summary["threshold_source"] = source
    if scorer.name == "cosine":
        result.summary["backbone"] = args.backbone or scoring.COSINE_BACKBONE
        result.summary["backbone_weights"] = args.backbone_weights
    if args.checkpoint:
        result.summary["checkpoint"] = str(args.checkpoint)
    document = result.to_dict()
    if args.json:
        data.atomic_write(args.json, json.dumps(document, indent=1) + "\n")
    if args.csv:
        data.atomic_write(args.csv, csv_text(document))
    if args.html:
        import report

        data.atomic_write(args.html, report.render_html(document))
    if not (args.json or args.csv or args.html):
        text = groups_text(document)
        if text:
            print(text)
    print(summary_line(result.summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
