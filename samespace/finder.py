"""Find duplicate photos of the same space in one or more folders.

    python find_duplicates.py PHOTOS_DIR [PHOTOS_DIR ...] [--checkpoint DIR | --method whash|phash|cosine|relative]
        [--threshold T] [--json FILE] [--csv FILE] [--html FILE] [--top-k K | --exhaustive] ...

Every image under the folders (recursively, any format PIL can read) is decoded once with decoding.load_image,
embedded once (backbone features, the Siamese head's projections, or a hash), and dropped; pairs are scored
from the embeddings (samespace.scorers, matching) and duplicate groups are formed from the pairs scoring at or above the
threshold by average linkage (grouping.py: groups do not chain). Photos are only ever opened for reading.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from samespace import (
    batch_decoding,
    blank,
    content_keys,
    errors,
    grouping,
    matching,
    photo_files,
    run_memory,
    scorers,
    scoring_methods,
)
from samespace import tiers as tiers_of
from samespace.commands import find
from samespace.embedding_store import EmbeddingStore

MAX_DECODE_ROUNDS = 3  # embed_photos: rounds of decoding photos whose bytes changed since their key was taken
FROM_STORE_BATCH = 4096  # rows handed from the store to the scorer at a time (280 MB of keypoints)


# A group with more photos than this is reported with a warning: usually a threshold too low for the collection
# or a burst of near-identical frames; its pairs are all kept (memory grows with the pairs kept, not all pairs).
MAX_GROUP_SIZE = 500
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
    tiers: list[str] = field(default_factory=list)  # each pair's match tier (samespace.tiers), aligned with left
    # Each group member's content key when the run ended (None: unreadable then), in groups' order: acting on the
    # result later refuses a file whose bytes are no longer the ones reported (samespace.actions).
    keys: list[list[str | None]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: groups (members, pairs as [path, path, score, tier]), every duplicate pair, skipped
        files, summary."""
        tiers = self.tiers or [tiers_of.SAME_SPACE] * len(self.left)
        pairs = [[self.paths[i], self.paths[j], round(float(s), 6), tiers[k]] for k, i, j, s in self._by_score()]
        groups_of: dict[int, set[int]] = {}  # with --against a library photo may be in several groups
        for g, members in enumerate(self.groups):
            for member in members.tolist():
                groups_of.setdefault(member, set()).add(g)
        group_pairs: list[list[list[Any]]] = [[] for _ in self.groups]
        for (_, i, j, _), pair in zip(self._by_score(), pairs, strict=True):
            for g in sorted(groups_of.get(i, set()) & groups_of.get(j, set())):  # across groups: in "pairs" only
                group_pairs[g].append(pair)
        groups = [
            {"members": [self.paths[k] for k in members], "pairs": group_pairs[g],
             **({"keys": self.keys[g]} if self.keys else {})}
            for g, members in enumerate(self.groups)
        ]
        return {"groups": groups, "pairs": pairs, "blank": self.blank, "skipped": self.skipped,
                "summary": self.summary}

    def _by_score(self) -> list[tuple[int, int, int, float]]:
        order = np.lexsort((self.right, self.left, -self.scores))
        return [(int(k), int(self.left[k]), int(self.right[k]), float(self.scores[k])) for k in order]


def find_duplicates(
    folders: Sequence[str | Path],
    scorer: scorers.PairScorer,
    threshold: float,
    top_k: int | None = None,
    exhaustive: bool = False,
    batch_size: int = scoring_methods.DEFAULT_BATCH_SIZE,
    progress: bool = True,
    decode_workers: int | None = None,
    decode_pool: str = batch_decoding.DEFAULT_POOL,
    store: EmbeddingStore | None = None,
    approximate: bool | None = None,
    paths: Sequence[Path] | None = None,
    keys: Sequence[str] | None = None,
    include_hidden: bool = False,
) -> Result:
    """Find the duplicate groups among the photos under ``folders`` with a fresh ``scorer``.

    Streams the photos: decode a batch, embed it, drop it (see :func:`embed_photos`; with a ``store`` only
    photos it does not hold are decoded). ``top_k`` / ``exhaustive`` / ``approximate`` choose the candidate
    pairs (see matching.find_matches). ``paths`` replaces the folder walk and ``keys`` gives their content keys
    (photos listed by a store: they are not opened). The summary holds counts and the time spent in each stage.
    """
    t0 = time.perf_counter()
    skipped: list[dict[str, str]] = []
    hidden: list[Path] = []  # left out of the walk (photo_files.image_files); counted in the summary
    paths = list(paths) if paths is not None else photo_files.image_files(folders, skipped, include_hidden, hidden)
    timings = {"find": time.perf_counter() - t0, "decode_wait": 0.0, "embed": 0.0}
    embedded = embed_photos(paths, scorer, store, batch_size, progress, decode_workers, timings, keys,
                            decode_pool=decode_pool)
    kept, flat = embedded.kept, embedded.blank
    skipped += embedded.skipped
    _check_some_kept(kept + flat, skipped, paths, folders)
    t = time.perf_counter()
    if kept:
        scorer.finish()
        left, right, scores, n_scored, candidates = matching.find_matches(scorer, threshold, top_k, exhaustive,
                                                                          approximate)
    else:  # every readable photo is blank
        left, right, scores, n_scored, candidates = _NO_MATCHES
    timings["pairs"] = time.perf_counter() - t
    t = time.perf_counter()
    decoded: tiers_of.Decoded = {}  # the paired photos' pixels, decoded once for the copy check and the tiers
    left, right, scores, n_copies = tiers_of.with_copies(scorer, [str(paths[k]) for k in kept], threshold, left,
                                                         right, scores, decoded=decoded)
    timings["copies"] = time.perf_counter() - t
    t = time.perf_counter()
    # Scored photos: average linkage within components (grouping.py); blank photos: identical bytes only.
    groups = grouping.linked_groups(len(kept), left, right, scores, threshold, score_fn=scorer.score)
    left, right, scores = _with_identical_blanks(paths, kept, flat, left, right, scores)
    groups = grouping.largest_first(
        groups + [g for g in grouping.connected_groups(len(kept) + len(flat), left, right) if g[0] >= len(kept)]
    )
    timings["group"] = time.perf_counter() - t
    _warn_large_groups(groups)
    t = time.perf_counter()
    ordered = [str(paths[k]) for k in (*kept, *flat)]  # blank photos after the scored ones (see _with_identical_blanks)
    pair_tiers = tiers_of.match_tiers(ordered, len(kept), scorer, left, right, decoded)
    timings["tiers"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    summary = {"folders": [str(f) for f in folders], "method": scorer.name, "threshold": threshold,
               "candidates": candidates, "files": len(paths), "hidden": len(hidden), "images": len(kept) + len(flat),
               "copies_below_threshold": n_copies, **_precision(scorer),
               **_counts(embedded, skipped, n_scored, left, groups, seconds, timings)}
    return Result(ordered, skipped, left, right, tiers_of.tiered_scores(scores, pair_tiers), groups, summary,
                  [str(paths[k]) for k in flat], pair_tiers,
                  [content_keys.keys_or_none(ordered[k] for k in g) for g in groups])


# What candidate search returns when there is nothing to score (every readable photo is blank).
_NO_MATCHES = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), 0, "none")


def _precision(scorer: scorers.PairScorer) -> dict[str, str]:
    """``{"precision": ...}`` when the backbone runs in reduced precision (``--precision``), else nothing."""
    precision = getattr(scorer.backbone(), "precision", "fp32")
    return {} if precision == "fp32" else {"precision": precision}


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
        raise errors.FindDuplicatesError(
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
    scorer: scorers.PairScorer,
    sink: Callable[[list[int], dict[str, np.ndarray]], None],
    batch_size: int,
    progress: bool,
    decode_workers: int | None,
    timings: dict[str, float],
    on_read: Callable[[batch_decoding.DecodedBatch], None] | None = None,
    decode_pool: str = batch_decoding.DEFAULT_POOL,
) -> tuple[list[tuple[int, str]], list[int]]:
    """Decode ``paths`` in batches, embed each batch and hand (indices, fields) to ``sink``; pixels are dropped
    after each batch. Blank photos (blank.is_blank) are not embedded. Returns the (index, reason) of every file
    that could not be decoded, and the indices of the blank photos. ``on_read``: decode keyed
    (:func:`decode_path_keyed`) and hand each batch to it before embedding (the store files rows by those keys)."""
    bad: list[tuple[int, str]] = []
    flat: list[int] = []
    # No empty "0img" bar when every photo came from the store; closed on an interrupt too, so that a message
    # after it starts on its own line.
    with tqdm(total=len(paths), desc=f"embed ({scorer.name})", unit="img", disable=not progress or len(paths) == 0,
              file=sys.stderr) as bar:
        batches = batch_decoding.decoded_batches(paths, batch_size, decode_workers, keyed=on_read is not None,
                                                 pool=decode_pool, then=scorer.photo_work)
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
                prepared = ([w for w, f in zip(batch.prepared, is_flat, strict=True) if not f] if batch.prepared
                            else None)
                sink(detailed, scorer.embed(batch.images[~is_flat], batch.aspects[~is_flat], prepared))
            timings["embed"] = timings.get("embed", 0.0) + time.perf_counter() - t
            bad.extend(batch.skipped)
            bar.update(len(batch.indices) + len(batch.skipped))
            del batch
    return bad, flat


def embed_photos(
    paths: Sequence[Path],
    scorer: scorers.PairScorer,
    store: EmbeddingStore | None = None,
    batch_size: int = scoring_methods.DEFAULT_BATCH_SIZE,
    progress: bool = True,
    decode_workers: int | None = None,
    timings: dict[str, float] | None = None,
    known_keys: Sequence[str] | None = None,
    fill_scorer: bool = True,
    decode_pool: str = batch_decoding.DEFAULT_POOL,
) -> Embedded:
    """Add the embedding of every readable photo in ``paths`` to ``scorer``, in path order.

    Without a store every photo is decoded and embedded. With one, each photo's content key is looked up
    (embedding_store.EmbeddingStore.key_for: the stat index, else a hash of the bytes); only keys the store
    lacks are decoded, once per distinct content, embedded and added to the store. ``known_keys`` (one per
    path) skips the lookup: the photos are opened only if the store lacks their key. ``fill_scorer=False``
    (with a store) only fills the store (embed.py). ``decode_workers`` threads or processes (``decode_pool``)
    decode the photos (batch_decoding.decoded_batches; default: one per core).
    """
    timings = timings if timings is not None else {}
    if fill_scorer:
        run_memory.check_memory(len(paths), scorer)
    if store is None:
        bad, flat = _stream_embed(paths, scorer, lambda _, fields: scorer.add_embeddings(fields), batch_size,
                                  progress, decode_workers, timings, decode_pool=decode_pool)
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
    if store.save_to is None:  # else rows are saved early (save_early): the store holds a bounded share of them
        run_memory.check_memory(0, scorer, len({key for key in keys if key is not None and key not in store}))
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

        def on_read(
            batch: batch_decoding.DecodedBatch, todo: list[int] = todo, read_keys: dict[int, str] = read_keys
        ) -> None:
            for i, key, st in zip(batch.indices, batch.keys, batch.stats, strict=True):
                read_keys[i] = key
                keys[todo[i]] = key
                store.remember(paths[todo[i]], st, key)

        def add(indices: list[int], fields: dict[str, np.ndarray], read_keys: dict[int, str] = read_keys) -> None:
            store.add([read_keys[i] for i in indices], fields)
            run_memory.save_early(store)

        bad, flat_todo = _stream_embed([paths[k] for k in todo], scorer, add, batch_size, progress, decode_workers,
                                       timings, on_read, decode_pool)
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
    if fill_scorer:
        for start in range(0, len(kept), FROM_STORE_BATCH):  # in batches: the scorer packs or spills keypoints
            scorer.add_embeddings(store.get([keys[k] for k in kept[start : start + FROM_STORE_BATCH]]))  # type: ignore[misc]
    timings["from_store"] = time.perf_counter() - t
    skipped = [{"path": str(paths[k]), "reason": reasons[k]} for k in sorted(reasons)]
    return Embedded(kept, skipped, embedded, len(kept) - embedded, flat)


# --------------------------------------------------------------------------------------------
# New photos against a library
# --------------------------------------------------------------------------------------------


def find_against(
    new_folders: Sequence[str | Path],
    library_folders: Sequence[str | Path],
    scorer: scorers.PairScorer,
    threshold: float,
    top_k: int | None = None,
    exhaustive: bool = False,
    batch_size: int = scoring_methods.DEFAULT_BATCH_SIZE,
    progress: bool = True,
    decode_workers: int | None = None,
    decode_pool: str = batch_decoding.DEFAULT_POOL,
    store: EmbeddingStore | None = None,
    approximate: bool | None = None,
    include_hidden: bool = False,
) -> Result:
    """Duplicates of new photos in a library: only pairs (new, library) are scored and reported.

    One group per new photo that has a match: the new photo first, then its library matches. A photo under
    both a new and a library folder belongs to the side of the folder nearer to it, and a link to a library photo
    is that photo (see :func:`photo_files.split_sides`).
    With a ``store`` holding the library, only the new photos are decoded and embedded.
    """
    t0 = time.perf_counter()
    skipped: list[dict[str, str]] = []
    hidden: list[Path] = []
    new_paths, library_paths = photo_files.split_sides(new_folders, library_folders, skipped, include_hidden, hidden)
    paths = new_paths + library_paths
    timings = {"find": time.perf_counter() - t0, "decode_wait": 0.0, "embed": 0.0}
    embedded = embed_photos(paths, scorer, store, batch_size, progress, decode_workers, timings,
                            decode_pool=decode_pool)
    kept, flat = embedded.kept, embedded.blank  # blank photos are listed, never matched (blank.py)
    skipped += embedded.skipped
    _check_some_kept(kept + flat, skipped, paths, [*new_folders, *library_folders])
    n_new = sum(1 for k in kept if k < len(new_paths))
    t = time.perf_counter()
    if kept:
        scorer.finish()
        left, right, scores, n_scored, candidates = matching.cross_matches(
            scorer, n_new, threshold, top_k, exhaustive, approximate
        )
    else:
        left, right, scores, n_scored, candidates = _NO_MATCHES
    timings["pairs"] = time.perf_counter() - t
    t = time.perf_counter()
    decoded: tiers_of.Decoded = {}
    left, right, scores, n_copies = tiers_of.with_copies(scorer, [str(paths[k]) for k in kept], threshold, left,
                                                         right, scores, n_new, decoded)
    timings["copies"] = time.perf_counter() - t
    groups = [np.concatenate([[i], right[left == i]]) for i in np.unique(left)]
    t = time.perf_counter()
    scored = [str(paths[k]) for k in kept]
    pair_tiers = tiers_of.match_tiers(scored, len(kept), scorer, left, right, decoded)
    timings["tiers"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    summary = {"folders": [str(f) for f in new_folders], "against": [str(f) for f in library_folders],
               "method": scorer.name, "threshold": threshold, "candidates": candidates, "files": len(paths),
               "hidden": len(hidden),
               "images": len(kept), "new_images": n_new, "library_images": len(kept) - n_new,
               "copies_below_threshold": n_copies, **_precision(scorer),
               **_counts(embedded, skipped, n_scored, left, groups, seconds, timings)}
    return Result(scored, skipped, left, right, tiers_of.tiered_scores(scores, pair_tiers), groups, summary,
                  [str(paths[k]) for k in flat], pair_tiers,
                  [content_keys.keys_or_none(scored[k] for k in g) for g in groups])



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



if __name__ == "__main__":
    sys.exit(find.main())
