"""Local scaling: a pair's cosine, minus how alike each of its two photos is to the rest of the collection.

The ``relative`` scoring method (``scorers.RelativeScorer``, the default of ``find_duplicates.py``)::

    score(i, j) = cos(i, j) - BETA * (r_i + r_j) / 2,   r_i = mean cosine of photo i to its K nearest other photos

This is cross-domain similarity local scaling (CSLS, Conneau et al. 2018, "Word translation without parallel
data"), the hubness correction that cohort score normalisation also makes in face and speaker verification.

The cosines are those of *augmented* vectors (database-side augmentation, DBA, as in alpha query expansion,
Radenovic et al. 2018): each photo's unit vector plus its :data:`DBA_K` nearest neighbours', weighted by how far
each neighbour stands above the photo's own neighbourhood, ``clip((cos - r_i) / (1 - r_i), 0, 1)``, renormalised
(:func:`augmentation`). A re-shoot that is its original's nearest neighbour is pulled towards it (and both towards
their other copies); a neighbour no closer than the photo's typical neighbours adds nothing, so two unrelated photos
alone in a small folder are not made alike. ``r`` is then recomputed over the same neighbours from the augmented
vectors. The neighbours are those of one search (:func:`matching.candidate_search` at a million photos), and the
augmented vectors are never stored: a pair's cosine is a weighted sum of the original rows' inner products
(:func:`augmented_cosine`), so memory stays that of the original vectors.
Why SameSpace needs it: how high the cosine of two *unrelated* photos runs depends on the collection. In a set of
look-alike photos (the generated rooms, one building's flats) unrelated photos reach cosine 0.85; among varied real
photos, re-shoots of one space fall to 0.6. No single cosine threshold serves both (README, "Default thresholds":
the best-F1 cosine thresholds of the two training splits are 0.89 and 0.70). ``r`` measures that density photo by
photo, and the scaled score's best threshold is nearly the same on both splits.

A photo's neighbours are the other photos of the same run (``--against``: the new photos and the library together).
In a collection with fewer than K other photos the missing neighbours count as :data:`R0` (for the DBA weights)
and :data:`R0_AUGMENTED` (for the score), the median ``r`` of the training splits, so a pair alone is scored as if it
sat in a typical collection. K, BETA, DBA_K and the threshold were chosen on the training splits only (README,
"Default thresholds", and "Quality benchmark").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samespace import neighbours

K = 10  # neighbours averaged into r (CSLS uses 10)
BETA = 0.75  # how much of the neighbourhood similarity is subtracted (CSLS: 1)
R0 = 0.6351  # median r of the plain cosines on the training splits (`samespace calibrate` prints it)
DBA_K = 2  # nearest neighbours added into each photo's vector (1-3 gain on the training splits, 5 loses)
R0_AUGMENTED = 0.7145  # median r of the augmented vectors on the training splits (`samespace calibrate` prints it)


def neighbourhood_similarity(
    unit: np.ndarray,
    k: int = K,
    r0: float = R0,
    approximate: bool | None = None,
    batch: int = 4096,
    ids: np.ndarray | None = None,
    augmented: Augmentation | None = None,
) -> np.ndarray:
    """``r`` of every row of ``unit`` (L2-normalised, (N, D)): the mean cosine to its ``k`` nearest other rows.

    Rows with fewer than ``k`` others count the missing ones as ``r0``. The neighbours come from ``ids`` when
    given (``neighbours.knn`` over ``unit`` itself, best first, with at least ``min(k, N - 1)`` columns: the
    first ``k`` are used, so candidate search and ``r`` share one search), else from ``neighbours.knn`` (exact, or
    approximate above ``neighbours.EXACT_LIMIT`` rows unless ``approximate`` says). With ``augmented`` (and
    ``ids``) the cosines are those of the augmented vectors (:func:`augmented_cosine`). Returns float64 (N,).
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
            valid = block >= 0
            if augmented is None:
                sims = neighbours.neighbour_inner_products(unit, block, unit[start : start + batch])
            else:
                rows = np.broadcast_to(np.arange(start, start + len(block))[:, None], block.shape)
                sims = np.zeros(block.shape, np.float64)
                sims[valid] = augmented_cosine(unit, augmented, rows[valid], block[valid])
            total[start : start + batch] = np.where(valid, sims, 0.0).sum(1, dtype=np.float64)
            found[start : start + batch] = valid.sum(1)
    return (total + (k - found) * r0) / k


def scaled(cosine: np.ndarray, r_left: np.ndarray, r_right: np.ndarray, beta: float = BETA) -> np.ndarray:
    """The relative score of pairs: ``cosine - beta * (r_left + r_right) / 2`` (broadcasting)."""
    return np.asarray(cosine, np.float64) - beta * 0.5 * (np.asarray(r_left) + np.asarray(r_right))


@dataclass(frozen=True)
class Augmentation:
    """Each photo's augmented vector ``a_i = sum_p weights[i, p] * unit[ids[i, p]]`` (unit: the original rows),
    kept as its recipe: rows and weights, not as N x D floats."""

    ids: np.ndarray  # (N, 1 + DBA_K) int64: the row itself, then its nearest other rows (-1: none)
    weights: np.ndarray  # (N, 1 + DBA_K) float64: 1 for the row itself; 0 where ids is -1
    norms: np.ndarray  # (N,) float64: |a_i| (at least 1e-12)


def augmentation(unit: np.ndarray, ids: np.ndarray, r: np.ndarray, k: int = DBA_K) -> Augmentation:
    """The DBA recipe of every row of ``unit``: itself plus its first ``k`` neighbours in ``ids`` (best first, -1:
    none), each weighted ``clip((cos - r_i) / (1 - r_i), 0, 1)`` with ``r`` the rows' :func:`neighbourhood_similarity`.
    """
    n = len(unit)
    near = np.full((n, k), -1, np.int64)
    near[:, : min(k, ids.shape[1])] = ids[:, :k]
    sims = neighbours.neighbour_inner_products(unit, near).astype(np.float64)
    room = np.maximum(1.0 - r[:, None], 1e-6)  # r < 1 unless every neighbour is an exact copy
    weights = np.where(near >= 0, np.clip((sims - r[:, None]) / room, 0.0, 1.0), 0.0)
    recipe = Augmentation(np.concatenate([np.arange(n)[:, None], near], 1),
                          np.concatenate([np.ones((n, 1)), weights], 1), np.ones(n))
    own = np.arange(n)
    # an all-zero row (a feature map of zeros) keeps norm 0 -> floored, so its cosines are 0, not NaN
    norms = np.maximum(np.sqrt(np.maximum(_recipe_products(unit, recipe, own, own), 0.0)), 1e-12)
    return Augmentation(recipe.ids, recipe.weights, norms)


def _recipe_products(unit: np.ndarray, recipe: Augmentation, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``a_left . a_right`` pair by pair: the weighted inner products of the recipes' original rows (faiss reads
    them in place; only the terms whose two weights are non-zero are computed)."""
    out = np.zeros(len(left), np.float64)
    width = recipe.ids.shape[1]
    for p in range(width):
        for q in range(width):
            w = recipe.weights[left, p] * recipe.weights[right, q]
            at = np.flatnonzero(w)
            if len(at):
                out[at] += w[at] * neighbours.pair_inner_products(
                    unit, recipe.ids[left[at], p], recipe.ids[right[at], q])
    return out


def augmented_cosine(unit: np.ndarray, augmented: Augmentation, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The cosine of the augmented vectors of pairs (``left[m]``, ``right[m]``), float64 (m,)."""
    left = np.asarray(left, np.int64)
    right = np.asarray(right, np.int64)
    products = _recipe_products(unit, augmented, left, right)
    return (products / (augmented.norms[left] * augmented.norms[right])).clip(-1.0, 1.0)


def augmented_vectors(unit: np.ndarray, augmented: Augmentation) -> np.ndarray:
    """All augmented vectors, L2-normalised (N, D) float32: for dense scoring of a small collection."""
    out = np.zeros(unit.shape, np.float32)
    for p in range(augmented.ids.shape[1]):
        out += augmented.weights[:, p, None].astype(np.float32) * unit[np.maximum(augmented.ids[:, p], 0)]
    return out / augmented.norms[:, None].astype(np.float32)
