"""Candidate pairs and their scores.

Every pair i < j up to scoring_methods.EXHAUSTIVE_LIMITS images, otherwise each image's
scoring_methods.DEFAULT_TOP_K nearest neighbours (samespace.neighbours: exact faiss search, approximate HNSW
above neighbours.EXACT_LIMIT images) deduplicated to i < j, so the number of scored pairs grows as N * K. One
search (candidate_search) also gives the relative method's neighbourhoods and augmentation.
"""

from __future__ import annotations

import numpy as np

from samespace import neighbours, scorers, scoring_methods

# --------------------------------------------------------------------------------------------
# Candidate pairs and scoring
# --------------------------------------------------------------------------------------------


def upper_pairs(start: int, stop: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) with start <= i < stop and i < j < n, row-major."""
    rows = np.arange(start, stop, dtype=np.int64)
    counts = np.maximum(n - 1 - rows, 0)
    left = np.repeat(rows, counts)
    offsets = np.arange(len(left), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return left, left + 1 + offsets


def exhaustive_matches(
    scorer: scorers.PairScorer, threshold: float, max_pairs_per_block: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Score every pair i < j, streamed in blocks of rows; keep the pairs scoring >= threshold.

    Returns (left, right, scores, pairs scored). Memory is one block, never N^2.
    """
    n = len(scorer)
    lefts, rights, scores = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float64)]
    block = max(1, max_pairs_per_block // max(n, 1))
    for start in range(0, n, block):
        stop = min(start + block, n)
        dense = scorer.score_rows(start, stop)
        if dense is not None:
            rows, cols = np.nonzero(dense >= threshold)
            keep = cols > rows + start
            left, right = rows[keep] + start, cols[keep]
            s = dense[left - start, right]
        else:
            left, right = upper_pairs(start, stop, n)
            s = scorer.score(left, right)
            keep = s >= threshold
            left, right, s = left[keep], right[keep], s[keep]
        lefts.append(left)
        rights.append(right)
        scores.append(s)
    left, right, s = _sorted_pairs(np.concatenate(lefts), np.concatenate(rights), np.concatenate(scores))
    return left, right, s, n * (n - 1) // 2


def candidate_search(
    scorer: scorers.PairScorer,
    top_k: int | None = None,
    approximate: bool | None = None,
    params: neighbours.SearchParams | None = None,
) -> np.ndarray:
    """Each image's ``top_k`` nearest neighbours as unique pairs (i < j), from ONE search of the collection.

    A scorer that needs neighbours itself (``neighbours_k``: the relative method's ``r``) gets the same search's
    first ``neighbours_k`` neighbours (:meth:`RelativeScorer.use_neighbours`): the search fetches
    ``max(top_k, neighbours_k)``, so a million photos are searched once, not twice. Returns (m, 2) int64, sorted.
    """
    vectors = scorer.search_vectors()
    n = len(vectors)
    k = top_k or scoring_methods.DEFAULT_TOP_K
    if n < 2:
        return np.zeros((0, 2), np.int64)
    ids = neighbours.knn(vectors, min(max(k, scorer.neighbours_k), n - 1), approximate=approximate, params=params)
    if scorer.neighbours_k:
        scorer.use_neighbours(ids)
    return neighbours.neighbour_pairs(ids[:, :k])


def candidate_matches(
    scorer: scorers.PairScorer, threshold: float, top_k: int | None, approximate: bool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Score each image's ``top_k`` nearest-neighbour pairs (:func:`candidate_search`); keep those >= threshold.

    Returns (left, right, scores, pairs scored).
    """
    pairs = candidate_search(scorer, top_k, approximate)
    scores = scorer.score(pairs[:, 0], pairs[:, 1]) if len(pairs) else np.zeros(0)
    keep = scores >= threshold
    return _sorted_pairs(pairs[keep, 0], pairs[keep, 1], scores[keep]) + (len(pairs),)


def _sorted_pairs(left: np.ndarray, right: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((right, left))
    return left[order].astype(np.int64), right[order].astype(np.int64), scores[order].astype(np.float64)


def find_matches(
    scorer: scorers.PairScorer,
    threshold: float,
    top_k: int | None = None,
    exhaustive: bool = False,
    approximate: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, str]:
    """The duplicate pairs: exhaustive up to the method's EXHAUSTIVE_LIMITS images (or when asked), else top-k.

    ``top_k`` given (and not ``exhaustive``) always means candidate search; ``approximate`` (True / False /
    None = above neighbours.EXACT_LIMIT) chooses approximate or exact nearest neighbours, and True implies
    candidate search. Returns (left, right, scores, pairs scored, description of the candidate search).
    """
    limit = scoring_methods.EXHAUSTIVE_LIMITS.get(scorer.name, 5000)
    if exhaustive or (top_k is None and not approximate and len(scorer) <= limit):
        return *exhaustive_matches(scorer, threshold), "exhaustive"
    k = top_k or scoring_methods.DEFAULT_TOP_K
    kind = " approximate" if neighbours.use_approximate(len(scorer), approximate) else ""
    return *candidate_matches(scorer, threshold, k, approximate), f"top-{k}{kind}"


def cross_matches(
    scorer: scorers.PairScorer,
    n_new: int,
    threshold: float,
    top_k: int | None = None,
    exhaustive: bool = False,
    approximate: bool | None = None,
    max_pairs_per_block: int = 1 << 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, str]:
    """Duplicate pairs (new, library) only: images ``0..n_new-1`` are new, the rest the library.

    Every cross pair is scored when there are at most as many as the method's exhaustive search scores
    (EXHAUSTIVE_LIMITS[method]^2 / 2) or when ``exhaustive``; otherwise each new image's ``top_k`` nearest
    library images (neighbours.cross_knn_pairs). Returns (left = new index, right = library index in the
    scorer, scores, pairs scored, description), sorted by (left, right).
    """
    n_library = len(scorer) - n_new
    limit = scoring_methods.EXHAUSTIVE_LIMITS.get(scorer.name, 5000)
    if n_new == 0 or n_library == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0), 0, "none"
    if exhaustive or (top_k is None and not approximate and n_new * n_library <= limit * (limit - 1) // 2):
        lefts, rights, kept_scores = [], [], []
        rows = max(1, max_pairs_per_block // n_library)
        library = np.arange(n_new, len(scorer), dtype=np.int64)
        for start in range(0, n_new, rows):
            new = np.arange(start, min(start + rows, n_new), dtype=np.int64)
            left, right = np.repeat(new, n_library), np.tile(library, len(new))
            s = scorer.score(left, right)
            keep = s >= threshold
            lefts.append(left[keep])
            rights.append(right[keep])
            kept_scores.append(s[keep])
        left, right, s = _sorted_pairs(np.concatenate(lefts), np.concatenate(rights), np.concatenate(kept_scores))
        return left, right, s, n_new * n_library, "exhaustive"
    k = top_k or scoring_methods.DEFAULT_TOP_K
    vectors = scorer.search_vectors()
    pairs = neighbours.cross_knn_pairs(vectors[:n_new], vectors[n_new:], k, approximate=approximate)
    left, right = pairs[:, 0], pairs[:, 1] + n_new
    scores = scorer.score(left, right) if len(pairs) else np.zeros(0)
    keep = scores >= threshold
    kind = " approximate" if neighbours.use_approximate(n_library, approximate) else ""
    return *_sorted_pairs(left[keep], right[keep], scores[keep]), len(pairs), f"top-{k}{kind}"
