"""Find duplicate photos of the same space in one or more folders.

    python find_duplicates.py PHOTOS_DIR [PHOTOS_DIR ...] [--checkpoint DIR | --method whash|phash|cosine|relative]
        [--threshold T] [--json FILE] [--csv FILE] [--html FILE] [--top-k K | --exhaustive] ...

Every image under the folders (recursively, any format PIL can read) is decoded once with data.load_image,
embedded once (backbone features, the Siamese head's projections, or a hash), and dropped; pairs are scored
from the embeddings (scoring.py) and duplicate groups are formed from the pairs scoring at or above the
threshold by average linkage (grouping.py: groups do not chain). Photos are only ever opened for reading.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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
import embedding_store
import grouping
import neighbours
import outputs
import scoring
import verification
from cli import EXIT_ERROR
from embedding_store import EmbeddingStore

DEFAULT_BATCH_SIZE = 64
BACKBONE_METHODS = ("cosine", "relative", "verified")  # the methods that run a backbone (--backbone applies to them)
MAX_DECODE_ROUNDS = 3  # embed_photos: rounds of decoding photos whose bytes changed since their key was taken


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


def _decode(path: Path) -> tuple[np.ndarray, float] | str:
    """The 256x256 uint8 image and its photo's aspect ratio, or the reason it cannot be read (data.decode_image
    turns every decoder failure into UnreadableImageError, so a file never stops the run and every reader gives
    the same reason)."""
    try:
        return data.decode_image(path)
    except data.UnreadableImageError as exc:
        message = str(exc)
        prefix = f"{path}: "
        return message[len(prefix) :] if message.startswith(prefix) else message


def _decode_keyed(path: Path) -> tuple[np.ndarray, float, str, os.stat_result] | str:
    """:func:`_decode` of the very bytes it hashes: also the content key of those bytes and the fstat taken before
    reading them, so a photo changed or swapped between hashing and decoding can never file one photo's
    embedding under another photo's key."""
    try:
        content, st = data.read_photo(path)
        image, aspect = data.decode_image(path, content=content)
    except data.UnreadableImageError as exc:
        message, prefix = str(exc), f"{path}: "
        return message[len(prefix) :] if message.startswith(prefix) else message
    return image, aspect, embedding_store.content_key_of(content), st


@dataclass
class DecodedBatch:
    """One batch of decoded images: the indices (into the path list) that decoded, their aspect ratios, and the
    ones that did not decode; with ``keyed`` decoding also each decoded photo's content key and stat."""

    indices: list[int]
    images: np.ndarray
    aspects: np.ndarray
    skipped: list[tuple[int, str]]
    keys: list[str] = field(default_factory=list)
    stats: list[os.stat_result] = field(default_factory=list)


def decoded_batches(paths: Sequence[Path], batch_size: int, workers: int = 2,
                    keyed: bool = False) -> Iterator[DecodedBatch]:
    """Decode ``paths`` batch by batch in ``workers`` threads, the next batch while the caller uses this one.

    At most two batches of decoded images exist at a time. ``keyed``: hash the bytes decoded (:func:`_decode_keyed`).
    """
    decode: Callable[[Path], Any] = _decode_keyed if keyed else _decode

    def submit(start: int) -> list[Future[Any]]:
        return [pool.submit(decode, p) for p in paths[start : start + batch_size]]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = submit(0)
        for start in range(0, len(paths), batch_size):
            results = [f.result() for f in pending]
            pending = submit(start + batch_size) if start + batch_size < len(paths) else []
            ok = [(start + k, r) for k, r in enumerate(results) if not isinstance(r, str)]
            bad = [(start + k, r) for k, r in enumerate(results) if isinstance(r, str)]
            images = (
                np.stack([r[0] for _, r in ok]) if ok
                else np.zeros((0, data.IMAGE_SIZE, data.IMAGE_SIZE, 3), np.uint8)
            )
            yield DecodedBatch([k for k, _ in ok], images, np.array([r[1] for _, r in ok], np.float64), bad,
                               [r[2] for _, r in ok] if keyed else [], [r[3] for _, r in ok] if keyed else [])


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
        for (i, j, _), pair in zip(self._by_score(), pairs, strict=True):
            if group_of[i] >= 0 and group_of[i] == group_of[j]:  # a pair across groups is listed in "pairs" only
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
    store: EmbeddingStore | None = None,
    approximate: bool | None = None,
    paths: Sequence[Path] | None = None,
    keys: Sequence[str] | None = None,
) -> Result:
    """Find the duplicate groups among the photos under ``folders`` with a fresh ``scorer``.

    Streams the photos: decode a batch, embed it, drop it (see :func:`embed_photos`; with a ``store`` only
    photos it does not hold are decoded). ``top_k`` / ``exhaustive`` / ``approximate`` choose the candidate
    pairs (see scoring.find_matches). ``paths`` replaces the folder walk and ``keys`` gives their content keys
    (photos listed by a store: they are not opened). The summary holds counts and the time spent in each stage.
    """
    t0 = time.perf_counter()
    skipped: list[dict[str, str]] = []
    paths = list(paths) if paths is not None else image_files(folders, skipped)
    timings = {"find": time.perf_counter() - t0, "decode_wait": 0.0, "embed": 0.0}
    embedded = embed_photos(paths, scorer, store, batch_size, progress, decode_workers, timings, keys)
    kept, flat = embedded.kept, embedded.blank
    skipped += embedded.skipped
    _check_some_kept(kept + flat, skipped, paths, folders)
    t = time.perf_counter()
    if kept:
        scorer.finish()
        left, right, scores, n_scored, candidates = scoring.find_matches(scorer, threshold, top_k, exhaustive,
                                                                          approximate)
    else:  # every readable photo is blank
        left, right, scores, n_scored, candidates = _NO_MATCHES
    timings["pairs"] = time.perf_counter() - t
    t = time.perf_counter()
    # Scored photos: average linkage within components (grouping.py); blank photos: identical bytes only.
    groups = grouping.linked_groups(len(kept), left, right, scores, threshold, score_fn=scorer.score)
    left, right, scores = _with_identical_blanks(paths, kept, flat, left, right, scores)
    groups = grouping.largest_first(
        groups + [g for g in grouping.connected_groups(len(kept) + len(flat), left, right) if g[0] >= len(kept)]
    )
    timings["group"] = time.perf_counter() - t
    _warn_large_groups(groups)
    seconds = time.perf_counter() - t0
    summary = {"folders": [str(f) for f in folders], "method": scorer.name, "threshold": threshold,
               "candidates": candidates, "files": len(paths), "images": len(kept) + len(flat),
               **_counts(embedded, skipped, n_scored, left, groups, seconds, timings)}
    ordered = [str(paths[k]) for k in (*kept, *flat)]  # blank photos after the scored ones (see _with_identical_blanks)
    return Result(ordered, skipped, left, right, scores, groups, summary, [str(paths[k]) for k in flat])


# What candidate search returns when there is nothing to score (every readable photo is blank).
_NO_MATCHES = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), 0, "none")


def _counts(embedded: Embedded, skipped: list[dict[str, str]], n_scored: int, left: np.ndarray,
            groups: list[np.ndarray], seconds: float, timings: dict[str, float]) -> dict[str, Any]:
    """The summary's counts and timings, the same for a folder run and a library run."""
    return {"blank": len(embedded.blank), "skipped": len(skipped), "embedded": embedded.embedded,
            "from_store": embedded.from_store, "pairs_scored": int(n_scored), "duplicate_pairs": len(left),
            "groups": len(groups), "images_in_groups": int(sum(len(g) for g in groups)),
            "seconds": round(seconds, 3), "timings": {k: round(v, 3) for k, v in timings.items()}}


def _check_some_kept(kept: list[int], skipped: list[dict[str, str]], paths: Sequence[Path],
                     folders: Sequence[str | Path]) -> None:
    if not kept:
        raise FindDuplicatesError(
            f"none of the {len(paths)} image files in {', '.join(str(f) for f in folders)} could be read: "
            + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
            + (" ..." if len(skipped) > 5 else "")
        )


# --------------------------------------------------------------------------------------------
# Embedding, with or without the embedding store
# --------------------------------------------------------------------------------------------


@dataclass
class Embedded:
    """What :func:`embed_photos` did: indices of the photos embedded into the scorer (in path order), the
    skipped files, how many photos were decoded and embedded, how many came from the store, and the blank
    photos (decoded every run: the store holds only embeddings)."""

    kept: list[int]
    skipped: list[dict[str, str]]
    embedded: int
    from_store: int
    blank: list[int] = field(default_factory=list)  # readable photos with almost no detail (blank.py), not embedded


def _stream_embed(
    paths: Sequence[Path],
    scorer: scoring.PairScorer,
    sink: Callable[[list[int], dict[str, np.ndarray]], None],
    batch_size: int,
    progress: bool,
    decode_workers: int,
    timings: dict[str, float],
    on_read: Callable[[DecodedBatch], None] | None = None,
) -> tuple[list[tuple[int, str]], list[int]]:
    """Decode ``paths`` in batches, embed each batch and hand (indices, fields) to ``sink``; pixels are dropped
    after each batch. Blank photos (blank.is_blank) are not embedded. Returns the (index, reason) of every file
    that could not be decoded, and the indices of the blank photos. ``on_read``: decode keyed
    (:func:`_decode_keyed`) and hand each batch to it before embedding (the store files rows by those keys)."""
    bad: list[tuple[int, str]] = []
    flat: list[int] = []
    # nothing to embed (every photo came from the store): no empty "0img" bar
    bar = tqdm(total=len(paths), desc=f"embed ({scorer.name})", unit="img", disable=not progress or len(paths) == 0,
               file=sys.stderr)
    batches = decoded_batches(paths, batch_size, decode_workers, keyed=on_read is not None)
    while True:
        t = time.perf_counter()
        batch = next(batches, None)
        timings["decode_wait"] = timings.get("decode_wait", 0.0) + time.perf_counter() - t
        if batch is None:
            break
        if on_read is not None:
            on_read(batch)
        t = time.perf_counter()
        is_flat = blank.is_blank(batch.images) if batch.indices else np.zeros(0, bool)
        flat.extend(k for k, f in zip(batch.indices, is_flat, strict=True) if f)
        if not is_flat.all():
            detailed = [k for k, f in zip(batch.indices, is_flat, strict=True) if not f]
            sink(detailed, scorer.embed(batch.images[~is_flat], batch.aspects[~is_flat]))
        timings["embed"] = timings.get("embed", 0.0) + time.perf_counter() - t
        bad.extend(batch.skipped)
        bar.update(len(batch.indices) + len(batch.skipped))
        del batch
    bar.close()
    return bad, flat


def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(n_photos: int, scorer: scoring.PairScorer) -> None:
    """Refuse, before any photo is decoded, a run whose keypoints (``--method verified``: every photo's, held until
    the pairs are scored) would take more than half of the machine's memory: it would fail hours later."""
    total = physical_memory()
    if not isinstance(scorer, scoring.VerifiedScorer) or not total:
        return
    need = n_photos * verification.BYTES_PER_PHOTO
    if need > total // 2:
        raise FindDuplicatesError(
            f"--method verified holds about {verification.BYTES_PER_PHOTO // 1000} KB of keypoints per photo in "
            f"memory: {n_photos:,} photos need about {need / 1e9:.1f} GB, more than half of this machine's "
            f"{total / 1e9:.1f} GB. Use the default method (relative) for a collection this large, or split it")


def embed_photos(
    paths: Sequence[Path],
    scorer: scoring.PairScorer,
    store: EmbeddingStore | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    decode_workers: int = 2,
    timings: dict[str, float] | None = None,
    known_keys: Sequence[str] | None = None,
    fill_scorer: bool = True,
) -> Embedded:
    """Add the embedding of every readable photo in ``paths`` to ``scorer``, in path order.

    Without a store every photo is decoded and embedded. With one, each photo's content key is looked up
    (embedding_store.EmbeddingStore.key_for: the stat index, else a hash of the bytes); only keys the store
    lacks are decoded, once per distinct content, embedded and added to the store. ``known_keys`` (one per
    path) skips the lookup: the photos are opened only if the store lacks their key. ``fill_scorer=False``
    (with a store) only fills the store (embed.py).
    """
    timings = timings if timings is not None else {}
    if fill_scorer:
        check_memory(len(paths), scorer)
    if store is None:
        bad, flat = _stream_embed(paths, scorer, lambda _, fields: scorer.add_embeddings(fields), batch_size,
                                  progress, decode_workers, timings)
        failed = {k for k, _ in bad} | set(flat)
        skipped = [{"path": str(paths[k]), "reason": reason} for k, reason in bad]
        kept = [k for k in range(len(paths)) if k not in failed]
        return Embedded(kept, skipped, len(kept), 0, flat)
    t = time.perf_counter()
    keys: list[str | None] = list(known_keys) if known_keys is not None else []
    reasons: dict[int, str] = {}
    for k, path in enumerate(paths if known_keys is None else []):
        try:
            keys.append(store.key_for(path))
        except OSError as exc:
            keys.append(None)
            reasons[k] = f"cannot read file ({type(exc).__name__}: {exc.strerror or exc})"
    timings["content_keys"] = time.perf_counter() - t
    blank_keys: set[str] = set()
    embedded = 0
    # Decode what the store lacks. The row of a decoded photo is filed under the key of the bytes decoded; a
    # photo that changed since its key was taken gets that new key, and a photo sharing its old key is then
    # missing from the store: it is decoded in the next round (a file that keeps changing is skipped).
    for _ in range(MAX_DECODE_ROUNDS):
        first_of: dict[str, int] = {}
        for k, key in enumerate(keys):
            if key is not None and k not in reasons and key not in store and key not in blank_keys:
                first_of.setdefault(key, k)
        todo = sorted(first_of.values())
        if not todo:
            break
        read_keys: dict[int, str] = {}

        def on_read(batch: DecodedBatch, todo: list[int] = todo, read_keys: dict[int, str] = read_keys) -> None:
            for i, key, st in zip(batch.indices, batch.keys, batch.stats, strict=True):
                read_keys[i] = key
                keys[todo[i]] = key
                store.remember(paths[todo[i]], st, key)

        def add(indices: list[int], fields: dict[str, np.ndarray], read_keys: dict[int, str] = read_keys) -> None:
            store.add([read_keys[i] for i in indices], fields)

        bad, flat_todo = _stream_embed([paths[k] for k in todo], scorer, add, batch_size, progress, decode_workers,
                                       timings, on_read)
        for i, reason in bad:
            reasons[todo[i]] = reason
        blank_keys |= {read_keys[i] for i in flat_todo}
        embedded += len(todo) - len(bad) - len(flat_todo)
        unreadable = {keys[todo[i]]: reason for i, reason in bad if keys[todo[i]] is not None}
        for k, key in enumerate(keys):
            if key in unreadable and k not in reasons:
                reasons[k] = unreadable[key]  # same bytes, same failure
    for k, key in enumerate(keys):
        if key is not None and k not in reasons and key not in store and key not in blank_keys:
            reasons[k] = "the file changed while it was being read; run again"
    flat = [k for k, key in enumerate(keys) if key in blank_keys and k not in reasons]
    kept = [k for k, key in enumerate(keys) if key is not None and k not in reasons and key not in blank_keys]
    t = time.perf_counter()
    if kept and fill_scorer:
        scorer.add_embeddings(store.get([keys[k] for k in kept]))  # type: ignore[misc]
    timings["from_store"] = time.perf_counter() - t
    skipped = [{"path": str(paths[k]), "reason": reasons[k]} for k in sorted(reasons)]
    return Embedded(kept, skipped, embedded, len(kept) - embedded, flat)


# --------------------------------------------------------------------------------------------
# New photos against a library
# --------------------------------------------------------------------------------------------


def find_against(
    new_folders: Sequence[str | Path],
    library_folders: Sequence[str | Path],
    scorer: scoring.PairScorer,
    threshold: float,
    top_k: int | None = None,
    exhaustive: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    decode_workers: int = 2,
    store: EmbeddingStore | None = None,
    approximate: bool | None = None,
) -> Result:
    """Duplicates of new photos in a library: only pairs (new, library) are scored and reported.

    One group per new photo that has a match: the new photo first, then its library matches. A photo under
    both a new and a library folder belongs to the side of the folder nearer to it (see :func:`split_sides`).
    With a ``store`` holding the library, only the new photos are decoded and embedded.
    """
    t0 = time.perf_counter()
    skipped: list[dict[str, str]] = []
    new_paths, library_paths = split_sides(new_folders, library_folders, skipped)
    paths = new_paths + library_paths
    timings = {"find": time.perf_counter() - t0, "decode_wait": 0.0, "embed": 0.0}
    embedded = embed_photos(paths, scorer, store, batch_size, progress, decode_workers, timings)
    kept, flat = embedded.kept, embedded.blank  # blank photos are listed, never matched (blank.py)
    skipped += embedded.skipped
    _check_some_kept(kept + flat, skipped, paths, [*new_folders, *library_folders])
    n_new = sum(1 for k in kept if k < len(new_paths))
    t = time.perf_counter()
    if kept:
        scorer.finish()
        left, right, scores, n_scored, candidates = scoring.cross_matches(
            scorer, n_new, threshold, top_k, exhaustive, approximate
        )
    else:
        left, right, scores, n_scored, candidates = _NO_MATCHES
    timings["pairs"] = time.perf_counter() - t
    groups = [np.concatenate([[i], right[left == i]]) for i in np.unique(left)]
    seconds = time.perf_counter() - t0
    summary = {"folders": [str(f) for f in new_folders], "against": [str(f) for f in library_folders],
               "method": scorer.name, "threshold": threshold, "candidates": candidates, "files": len(paths),
               "images": len(kept), "new_images": n_new, "library_images": len(kept) - n_new,
               **_counts(embedded, skipped, n_scored, left, groups, seconds, timings)}
    return Result([str(paths[k]) for k in kept], skipped, left, right, scores, groups, summary,
                  [str(paths[k]) for k in flat])


def _real_parent(path: Path) -> Path:
    """``path`` with its folders' symbolic links resolved (not the file's own: a linked photo stays put)."""
    return Path(os.path.realpath(path.parent)) / path.name


def split_sides(
    new_folders: Sequence[str | Path], library_folders: Sequence[str | Path], skipped: list[dict[str, str]]
) -> tuple[list[Path], list[Path]]:
    """The photos of the new folders and of the library folders, each photo on one side only.

    Folders may overlap (a library inside the photos folder, or the reverse): a photo under both counts on the
    side of the folder nearest to it, and one warning per overlapping pair of folders says how many photos went
    where. The same folder on both sides is a FindDuplicatesError.
    """
    new = [Path(os.path.realpath(f)) for f in new_folders]
    library = [Path(os.path.realpath(f)) for f in library_folders]
    for folder, real in zip(library_folders, library, strict=True):
        if real in new:
            raise FindDuplicatesError(f"{folder} is given both as PHOTOS_DIR and with --against; give it once")
    new_paths = image_files(new_folders, skipped)
    library_paths = image_files(library_folders, skipped)

    def nearest(real: Path) -> tuple[str, Path]:
        holders = [(len(f.parts), side, f) for side, folders in (("new", new), ("library", library))
                   for f in folders if real.is_relative_to(f)]
        _, side, folder = max(holders)
        return side, folder

    on_both = {_real_parent(p) for p in new_paths} & {_real_parent(p) for p in library_paths}
    side_of = {real: nearest(real) for real in on_both}
    for (side, folder), count in sorted(Counter(side_of.values()).items()):
        other = "PHOTOS_DIR" if side == "library" else "--against"
        warnings.warn(f"{count:,} photos under {folder} are also under a {other} folder; they count as {side} "
                      "photos (the nearer folder decides)", stacklevel=2)

    def keep(paths: list[Path], side: str) -> list[Path]:
        return [p for p in paths if side_of.get(_real_parent(p), (side,))[0] == side]

    return keep(new_paths, "new"), keep(library_paths, "library")


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
    """Every duplicate pair as CSV: group (1-based), path1, path2, score.

    A path a spreadsheet would run as a formula (starting with ``= + - @`` or a tab) gets a leading ``'``
    (outputs.csv_cell); the JSON output keeps every name exactly.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "path1", "path2", "score"])
    for g, group in enumerate(document["groups"], 1):
        for a, b, s in group["pairs"]:
            writer.writerow([g, outputs.csv_cell(a), outputs.csv_cell(b), f"{s:.6f}"])
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def check_output_paths(args: argparse.Namespace, store: Path | None = None) -> None:
    """Refuse, before any work, outputs that would replace a photo, a link, a device or a file we did not write
    (outputs.py): the reports (``-`` or ``/dev/stdout``: standard output) and the store file this run writes."""
    targets = [outputs.Target(f"--{o}", Path(getattr(args, o)), stream=True) for o in ("json", "csv", "html")
               if getattr(args, o)]
    if store is not None:
        targets.append(outputs.Target("--store", store))
    try:
        outputs.check_outputs(
            targets, inputs=[*args.folders, *(args.against or [])], overwrite=args.overwrite,
            input_files=[args.embeddings] if args.embeddings else [], image_extensions=readable_extensions(),
        )
    except outputs.OutputError as exc:
        raise FindDuplicatesError(str(exc)) from exc


def _device(name: str) -> str:
    from model import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise FindDuplicatesError(str(exc)) from exc


def _default_method(args: argparse.Namespace) -> str:
    """Without --checkpoint / --method: the shipped default model (default_model.py) when present, else relative."""
    import default_model

    plain = args.backbone is None and args.backbone_weights == "imagenet"
    return "default" if plain and default_model.available() else "relative"


def build_scorer(args: argparse.Namespace, device: str) -> tuple[scoring.PairScorer, float, str]:
    """The scorer the options ask for, its threshold, and where the threshold came from."""
    method = "model" if args.checkpoint else (args.method or _default_method(args))
    if method == "default":
        import default_model

        try:
            model, threshold = default_model.load(device)
        except default_model.DefaultModelError as exc:
            raise FindDuplicatesError(str(exc)) from exc
        source = f"shipped default model ({default_model.META.name})"
        scorer: scoring.PairScorer = scoring.ModelScorer(model, batch_size=args.batch_size, device=device)
    elif method == "model":
        if not Path(args.checkpoint).is_dir():
            raise FindDuplicatesError(f"{args.checkpoint}: checkpoint folder not found")
        from model_def import load_model

        model = load_model(args.checkpoint, device=device)  # a CheckpointError (ValueError) names the folder
        threshold, source = scoring.read_model_threshold(args.checkpoint)
        scorer = scoring.ModelScorer(model, batch_size=args.batch_size, device=device)
    elif method in BACKBONE_METHODS:
        from model import BackboneWeightsError

        backbone = args.backbone or scoring.COSINE_BACKBONE
        try:
            scorer = scoring.reference_scorer(method, backbone, args.backbone_weights, device, args.batch_size)
        except BackboneWeightsError as exc:
            raise FindDuplicatesError(str(exc)) from exc
        threshold, source = scoring.DEFAULT_THRESHOLDS[method], f"calibrated default ({scoring.COSINE_BACKBONE})"
        if (backbone, args.backbone_weights) != (scoring.COSINE_BACKBONE, "imagenet") and args.threshold is None:
            print(
                f"warning: the default {method} threshold {threshold} was calibrated with {scoring.COSINE_BACKBONE} "
                f"ImageNet weights, not {backbone} / {args.backbone_weights}; consider --threshold",
                file=sys.stderr,
            )
            source = f"calibrated for {scoring.COSINE_BACKBONE} imagenet, used with {backbone} {args.backbone_weights}"
    else:
        scorer = scoring.HashScorer(method)
        threshold, source = scoring.DEFAULT_THRESHOLDS[method], "calibrated default"
    if args.threshold is not None:
        threshold, source = args.threshold, "--threshold"
    if isinstance(scorer, scoring.VerifiedScorer):  # pairs the largest bonus cannot lift to the threshold: unverified
        scorer.verify_from = threshold - verification.MAX_BONUS
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
            f"whash {t['whash']}, phash {t['phash']}, cosine {t['cosine']} (best F1 on the generated sample set), "
            f"relative {t['relative']} and verified {t['verified']} (the best F1 of the groups, averaged over the "
            f"real-photo and generated training splits); cosine, relative and verified with "
            f"{scoring.COSINE_BACKBONE} ImageNet weights. "
            f"Candidate pairs: every pair up to "
            f"{limits['model']:,} images for the model and {limits['cosine']:,} for the reference methods, else "
            f"each image's {scoring.DEFAULT_TOP_K} nearest neighbours. "
            f"Exit status: 0 on success, {EXIT_ERROR} on an error (no images, bad options)."
        ),
    )
    parser.add_argument("folders", nargs="*", metavar="PHOTOS_DIR", help="folders searched recursively")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--checkpoint", metavar="DIR", help="score pairs with this trained model checkpoint")
    how.add_argument(
        "--method",
        choices=scoring.REFERENCE_METHODS,
        help="score pairs with a reference method instead (default without --checkpoint: the shipped default model "
        "default_model.pt when present, else relative: local_scaling.py)",
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
        help=f"backbone of the cosine and relative methods (default: {scoring.COSINE_BACKBONE})",
    )
    parser.add_argument(
        "--backbone-weights",
        default="imagenet",
        metavar="imagenet|none|PATH",
        help="weights of the cosine / relative backbone (default: imagenet)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_store_options(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """The options of the embedding store, approximate search and library queries."""
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
        help="group from this store (e.g. written by embed.py); without PHOTOS_DIR, every photo it lists, "
        "without opening them. It must exist and match the scorer. It is only read: photos it lacks are embedded "
        "for this run alone (use --store FILE to add them to it)",
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


def open_store_for(args: argparse.Namespace, scorer: scoring.PairScorer) -> tuple[EmbeddingStore | None, Path | None]:
    """The embedding store the options ask for (None with --no-cache) and its file."""
    if args.no_cache:
        return None, None
    fingerprint = embedding_store.scorer_fingerprint(scorer)
    path = Path(args.embeddings or args.store or embedding_store.default_store_path(scorer.name, fingerprint))
    try:
        store = embedding_store.open_store(path, fingerprint, scorer.name, scorer.fields, strict=bool(args.embeddings))
    except embedding_store.StoreError as exc:
        raise FindDuplicatesError(str(exc)) from exc
    return store, path


def save_store(store: EmbeddingStore | None, path: Path | None) -> None:
    """Write the store when this run changed it; a store that cannot be written is a warning, not a failure
    (a link, a device or a FIFO at the store's path is never replaced: outputs.atomic_write)."""
    if store is None or path is None or not store.changed:
        return
    try:
        store.save(path)
    except (OSError, outputs.OutputError) as exc:
        print(f"warning: {path}: cannot write the embedding store ({exc})", file=sys.stderr)


def run(args: argparse.Namespace, scorer: scoring.PairScorer, threshold: float, store: EmbeddingStore | None) -> Result:
    """The run the options ask for: folders, new photos --against a library, or the photos a store lists."""
    options = dict(top_k=args.top_k, exhaustive=args.exhaustive, batch_size=args.batch_size,
                   progress=not args.no_progress, store=store, approximate=args.approximate)
    if args.against:
        return find_against(args.folders, args.against, scorer, threshold, **options)
    if not args.folders:  # --embeddings alone: the photos the store lists
        listed = store.listed_paths() if store is not None else []
        if not listed:
            raise FindDuplicatesError(f"{args.embeddings}: the store lists no photos")
        entries = store.stat_entries()  # type: ignore[union-attr]
        return find_duplicates([args.embeddings], scorer, threshold, paths=[Path(p) for p in listed],
                               keys=[entries[p][2] for p in listed], **options)
    return find_duplicates(args.folders, scorer, threshold, **options)


def check_threshold(threshold: float | None, method: str) -> None:
    """--threshold must be a number in the method's score range (scoring.SCORE_RANGES), [0, 1] by default."""
    if threshold is None:
        return
    low, high = scoring.SCORE_RANGES.get(method, (0.0, 1.0))
    if not (low <= threshold <= high):  # also refuses nan
        raise FindDuplicatesError(
            f"--threshold {threshold:g}: expected a number in [{low:g}, {high:g}] for {method} scores")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Bad input is one ``error:`` line on stderr and exit status 2 (``--debug``: the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.backbone or args.backbone_weights != "imagenet") and (args.method or "relative") not in BACKBONE_METHODS:
        parser.error("--backbone / --backbone-weights apply to --method cosine, relative or verified")
    if args.checkpoint and (args.backbone or args.backbone_weights != "imagenet"):
        parser.error("--backbone / --backbone-weights apply to --method cosine, relative or verified (a checkpoint "
                     "brings its own)")
    if args.batch_size < 1 or (args.top_k is not None and args.top_k < 1):
        parser.error("--batch-size and --top-k must be positive")
    if not args.folders and not args.embeddings:
        parser.error("give PHOTOS_DIR (or --embeddings FILE)")
    if args.against and not args.folders:
        parser.error("--against needs the new photos' folders (PHOTOS_DIR)")
    if args.approximate and args.exhaustive:
        parser.error("--approximate and --exhaustive exclude each other")
    try:
        with data.clean_warnings():
            return _run(args)
    except (FindDuplicatesError, ValueError, OSError) as exc:  # OSError: e.g. the disk filled up while writing
        if args.debug:
            raise
        print(f"error: {outputs.printable_name(str(exc), quote=False)}", file=sys.stderr)
        return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    check_threshold(args.threshold, "model" if args.checkpoint else (args.method or _default_method(args)))
    check_output_paths(args, Path(args.store) if args.store else None)
    for folder in [*args.folders, *(args.against or [])]:  # fail fast, before loading a model
        if not Path(folder).is_dir():
            raise FindDuplicatesError(f"{folder}: not a directory")
    scorer, threshold, source = build_scorer(args, _device(args.device))
    store, store_path = open_store_for(args, scorer)
    result = run(args, scorer, threshold, store)
    save_store(store, None if args.embeddings else store_path)  # --embeddings is an input: never rewritten
    result.summary["store"] = str(store_path) if store_path else None
    result.summary["threshold_source"] = source
    if scorer.name in BACKBONE_METHODS:
        result.summary["backbone"] = args.backbone or scoring.COSINE_BACKBONE
        result.summary["backbone_weights"] = args.backbone_weights
    if args.checkpoint:
        result.summary["checkpoint"] = str(args.checkpoint)
    document = result.to_dict()
    if args.json:
        outputs.atomic_write(args.json, json.dumps(document, indent=1) + "\n")
    if args.csv:
        outputs.atomic_write(args.csv, csv_text(document))
    if args.html:
        import report

        outputs.atomic_write(args.html, report.render_html(document))
    # An output streamed to standard output keeps it for itself: the text goes to stderr then.
    streamed = any(outputs.is_stdout(o) for o in (args.json, args.csv, args.html) if o)
    console = sys.stderr if streamed else sys.stdout
    if not (args.json or args.csv or args.html):
        text = groups_text(document)
        if text:
            print(text, file=console)
    print(summary_line(result.summary), file=console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
