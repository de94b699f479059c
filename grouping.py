"""Duplicate groups from scored pairs: groups whose members are alike, not chains.

Connected components of the pairs scoring at or above the threshold chain: A~B and B~C put A with C even
when A and C are unlike, and on look-alike rooms one low-margin link can join two rooms' photos. So:

**The rule** (:func:`linked_groups`). Within each connected component, average-linkage agglomerative
clustering on the pair scores: start from single photos and repeatedly merge the two clusters whose
*mean* pair score (over every pair across them) is highest, as long as that mean is >= the threshold.
A group is what remains: every two of its sub-clusters are alike on average, and a photo joins a group
only if it is alike to its members on average, not just to one of them. In the chain A~B~C with A, C
unlike, {A, B} (or {B, C}) is a group and the third photo is not in it. Pairs that were not scored (not
among the candidates) are scored with ``score_fn`` when given, else count as unlike (:data:`UNLIKE`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

UNLIKE = -1.0  # the score of a pair known to be below threshold but not scored (lowest cosine)
# Components up to this size get every missing pair scored with score_fn (about 0.5 M pairs); above it,
# missing pairs count as UNLIKE, so memory and time stay bounded on huge components.
MAX_SCORED_COMPONENT = 1000


def connected_groups(n: int, left: np.ndarray, right: np.ndarray) -> list[np.ndarray]:
    """Connected components of the graph on n images with the given edges, as sorted index arrays.

    Only components of two or more images; largest first, ties by their first index.
    """
    if n == 0 or len(left) == 0:
        return []
    graph = coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)
    groups = [np.sort(g) for g in groups if len(g) > 1]
    return largest_first(groups)


def largest_first(groups: list[np.ndarray]) -> list[np.ndarray]:
    """Groups sorted largest first, ties by their first index."""
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


def _component_scores(
    members: np.ndarray, left: np.ndarray, right: np.ndarray, scores: np.ndarray,
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    """Dense symmetric score matrix of a component's members (known pairs, then score_fn or UNLIKE)."""
    m = len(members)
    local = {int(g): k for k, g in enumerate(members)}
    dense = np.full((m, m), np.nan)
    for i, j, s in zip(left, right, scores, strict=True):
        a, b = local[int(i)], local[int(j)]
        dense[a, b] = dense[b, a] = s
    np.fill_diagonal(dense, 0.0)
    rows, cols = np.nonzero(np.triu(np.isnan(dense), k=1))
    if len(rows):
        if score_fn is not None and m <= MAX_SCORED_COMPONENT:
            filled = score_fn(members[rows], members[cols])
        else:
            filled = np.full(len(rows), UNLIKE)
        dense[rows, cols] = dense[cols, rows] = filled
    return dense


def linked_groups(
    n: int,
    left: np.ndarray,
    right: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Duplicate groups by the rule in the module docstring: average linkage at ``threshold`` within each
    connected component of the pairs (left[k], right[k]) scoring ``scores[k]`` >= threshold. Pairs below the
    threshold may be given too: their scores are used as known, not re-scored.

    Returns sorted index arrays of two or more images, largest first, ties by their first index.
    """
    left, right, scores = (np.asarray(a) for a in (left, right, scores))
    strong = scores >= threshold
    out: list[np.ndarray] = []
    component_of = np.full(n, -1, np.int64)
    components = connected_groups(n, left[strong], right[strong])
    for c, members in enumerate(components):
        component_of[members] = c
    for c, members in enumerate(components):
        if len(members) == 2:
            out.append(members)
            continue
        inside = (component_of[left] == c) & (component_of[right] == c)  # every known score in the component
        dense = _component_scores(members, left[inside], right[inside], scores[inside], score_fn)
        # Distances for scipy: top - score, so "mean score >= threshold" is "mean distance <= top - threshold".
        top = float(max(dense.max(), threshold)) + 1.0
        distance = top - dense
        np.fill_diagonal(distance, 0.0)
        condensed = distance[np.triu_indices(len(members), k=1)]
        tree = linkage(condensed, method="average")
        labels = fcluster(tree, t=top - threshold, criterion="distance")
        for label in np.unique(labels):
            group = members[labels == label]
            if len(group) > 1:
                out.append(np.sort(group))
    return largest_first(out)
