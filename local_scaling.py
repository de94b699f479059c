"""Local scaling: a pair's cosine, minus how alike each of its two photos is to the rest of the collection.

The ``relative`` scoring method (``scoring.RelativeScorer``, the default of ``find_duplicates.py``)::

    score(i, j) = cos(i, j) - BETA * (r_i + r_j) / 2,   r_i = mean cosine of photo i to its K nearest other photos

This is cross-domain similarity local scaling (CSLS, Conneau et al. 2018, "Word translation without parallel
data"), the hubness correction that cohort score normalisation also makes in face and speaker verification.
Why SameSpace needs it: how high the cosine of two *unrelated* photos runs depends on the collection. In a set of
look-alike photos (the generated rooms, one building's flats) unrelated photos reach cosine 0.85; among varied real
photos, re-shoots of one space fall to 0.6. No single cosine threshold serves both (README, "Default thresholds":
the best-F1 cosine thresholds of the two training splits are 0.89 and 0.70). ``r`` measures that density photo by
photo, and the scaled score's best threshold is nearly the same on both splits.

A photo's neighbours are the other photos of the same run (``--against``: the new photos and the library together).
In a collection with fewer than K other photos the missing neighbours count as :data:`R0`, the median ``r`` of the
training splits, so a pair alone is scored as if it sat in a typical collection.
K, BETA and the threshold were chosen on the training splits only (README, "Default thresholds").
"""

from __future__ import annotations

import numpy as np

import neighbours

K = 10  # neighbours averaged into r (CSLS uses 10)
BETA = 0.75  # how much of the neighbourhood similarity is subtracted (CSLS: 1)
R0 = 0.6705  # median r on the training splits (`python scoring.py calibrate --methods relative ...` prints it)


def neighbourhood_similarity(
    unit: np.ndarray,
    k: int = K,
    r0: float = R0,
    approximate: bool | None = None,
    batch: int = 4096,
    ids: np.ndarray | None = None,
) -> np.ndarray:
    """``r`` of every row of ``unit`` (L2-normalised, (N, D)): the mean cosine to its ``k`` nearest other rows.

    Rows with fewer than ``k`` others count the missing ones as ``r0``. The neighbours come from ``ids`` when
    given (``neighbours.knn`` over ``unit`` itself, best first, with at least ``min(k, N - 1)`` columns: the
    first ``k`` are used, so candidate search and ``r`` share one search), else from ``neighbours.knn`` (exact, or
    approximate above ``neighbours.EXACT_LIMIT`` rows unless ``approximate`` says). Returns float64 (N,).
    """
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    n = len(unit)
    total = np.zeros(n, np.float64)
    found = np.zeros(n, np.int64)
    if n > 1:
        if ids is None:
            ids = neighbours.knn(unit, min(k, n - 1), approximate=approximate)
        elif len(ids) != n or ids.shape[1] < min(k, n - 1):
            raise ValueError(f"ids must be ({n}, >= {min(k, n - 1)}) neighbours of the rows, got {ids.shape}")
        ids = ids[:, :k]
        for start in range(0, n, batch):  # faiss reads the neighbour rows in place, block by block
            block = ids[start : start + batch]
            sims = neighbours.neighbour_inner_products(unit, block, unit[start : start + batch])
            valid = block >= 0
            total[start : start + batch] = np.where(valid, sims, 0.0).sum(1, dtype=np.float64)
            found[start : start + batch] = valid.sum(1)
    return (total + (k - found) * r0) / k


def scaled(cosine: np.ndarray, r_left: np.ndarray, r_right: np.ndarray, beta: float = BETA) -> np.ndarray:
    """The relative score of pairs: ``cosine - beta * (r_left + r_right) / 2`` (broadcasting)."""
    return np.asarray(cosine, np.float64) - beta * 0.5 * (np.asarray(r_left) + np.asarray(r_right))
