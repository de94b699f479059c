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

**Bounded components.** Linkage needs a dense m x m score matrix per component, so a component larger than
:data:`MAX_LINKED_COMPONENT` is first split (:func:`split_component`): its weakest links are dropped (the
lowest score that leaves every piece within the cap is found by bisection) and each piece is grouped on its
own; a group then never spans two pieces, which were joined only by links weaker than every link kept.
A piece that no score splits (all its links score the same, e.g. thousands of identical photos) is one group.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

UNLIKE = -1.0  # the score of a pair known to be below threshold but not scored (lowest cosine)
# Components up to this size get every missing pair scored with score_fn (about 0.5 M pairs); above it,
# missing pairs count as UNLIKE, so memory and time stay bounded on huge components.
MAX_SCORED_COMPONENT = 1000
# Components above this size are split before linkage: the dense matrices of 5,000 photos take ~0.6 GB.
MAX_LINKED_COMPONENT = 5000


def connected_groups(n: int, left: np.ndarray, right: np.ndarray) -> list[np.ndarray]:
    """Connected components of the graph on n images with the given edges, as sorted index arrays.

    Only components of two or more images; largest first, ties by their first index.
    """
    if n == 0 or len(left) == 0:
        return []
    graph = coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    groups = [np.sort(g) for g in _runs(order, labels[order]) if len(g) > 1]
    return largest_first(groups)


def same_group(n: int, groups: list[np.ndarray], left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """For each pair (left[k], right[k]) of n images, whether both ended in one of ``groups``: what the groups
    say of the pair, to score them pair by pair against labels."""
    group_of = np.full(n, -1, np.int64)
    for g, members in enumerate(groups):
        group_of[members] = g
    left_group = group_of[np.asarray(left)]
    return (left_group >= 0) & (left_group == group_of[np.asarray(right)])


def _runs(values: np.ndarray, keys: np.ndarray) -> list[np.ndarray]:
    """``values`` cut where the sorted ``keys`` change: np.split's result, without its per-piece overhead
    (a million photos make hundreds of thousands of pieces)."""
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(keys)) + 1, [len(keys)])).tolist()
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# Kept over scipy's fcluster(tree, height, criterion="distance"): the same groups (tests), but fcluster's per-call
# validation made linked_groups 2-3x slower on 6,152 small components (1.7-2.1 s against 4.2-5.7 s, 250,000 photos).
def cut_tree(tree: np.ndarray, m: int, height: float) -> np.ndarray:
    """Cluster labels of m leaves: the merges of a scipy linkage ``tree`` at or below ``height`` (fcluster's
    "distance" criterion for a monotone tree, as average linkage's is), without scipy's per-call validation."""
    parent = np.arange(2 * m - 1)
    merged = np.flatnonzero(tree[:, 2] <= height)
    parent[tree[merged, 0].astype(np.int64)] = m + merged
    parent[tree[merged, 1].astype(np.int64)] = m + merged
    while True:  # pointer jumping: each pass halves the remaining path to a root, so log(m) passes
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            return parent[:m]
        parent = jumped


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


def _edges_by_component(component_of: np.ndarray, left: np.ndarray, right: np.ndarray) -> dict[int, np.ndarray]:
    """Indices of the pairs with both ends in one component, per component (one sort: O(E log E) in all)."""
    same = component_of[left] == component_of[right]
    label = np.where(same & (component_of[left] >= 0), component_of[left], -1)
    order = np.argsort(label, kind="stable")
    order = order[label[order] >= 0]
    if len(order) == 0:
        return {}
    return {int(label[part[0]]): part for part in _runs(order, label[order])}


def split_component(
    members: np.ndarray, left: np.ndarray, right: np.ndarray, scores: np.ndarray, threshold: float, cap: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split one component (its pairs: left, right, scores) into pieces of at most ``cap`` members.

    The cut is the lowest score t >= threshold such that the pairs scoring >= t leave no piece above the cap
    (bisection over the pair scores). Returns (pieces to group by linkage, pieces no score splits: each is one
    group). Pieces of one member are dropped.
    """
    a, b = np.searchsorted(members, left), np.searchsorted(members, right)  # local indices (members sorted)
    levels = np.unique(scores[scores >= threshold])

    def pieces(cut: float) -> list[np.ndarray]:
        keep = scores >= cut
        return [members[p] for p in connected_groups(len(members), a[keep], b[keep])]

    lo, hi = 0, len(levels) - 1  # find the lowest level whose largest piece fits
    if max(len(p) for p in pieces(levels[hi])) > cap:
        top = pieces(levels[hi])
        return [p for p in top if len(p) <= cap], [p for p in top if len(p) > cap]
    while lo < hi:
        mid = (lo + hi) // 2
        if max((len(p) for p in pieces(levels[mid])), default=0) <= cap:
            hi = mid
        else:
            lo = mid + 1
    return pieces(levels[lo]), []


def linked_groups(
    n: int,
    left: np.ndarray,
    right: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    max_component: int = MAX_LINKED_COMPONENT,
) -> list[np.ndarray]:
    """Duplicate groups by the rule in the module docstring: average linkage at ``threshold`` within each
    connected component of the pairs (left[k], right[k]) scoring ``scores[k]`` >= threshold. Pairs below the
    threshold may be given too: their scores are used as known, not re-scored. Components above
    ``max_component`` members are split first (:func:`split_component`).

    Returns sorted index arrays of two or more images, largest first, ties by their first index.
    """
    left, right, scores = (np.asarray(a) for a in (left, right, scores))
    strong = scores >= threshold
    out: list[np.ndarray] = []
    components = connected_groups(n, left[strong], right[strong])
    big = [c for c in components if len(c) > max_component]
    if big:
        component_of = np.full(n, -1, np.int64)
        for c, members in enumerate(big):
            component_of[members] = c
        edges = _edges_by_component(component_of, left, right)
        components = [c for c in components if len(c) <= max_component]
        for c, members in enumerate(big):
            e = edges[c]
            pieces, whole = split_component(members, left[e], right[e], scores[e], threshold, max_component)
            components += pieces
            out += whole
    component_of = np.full(n, -1, np.int64)
    for c, members in enumerate(components):
        component_of[members] = c
    edges = _edges_by_component(component_of, left, right)
    for c, members in enumerate(components):
        if len(members) == 2:
            out.append(members)
            continue
        e = edges[c]  # every known score in the component
        dense = _component_scores(members, left[e], right[e], scores[e], score_fn)
        # Distances for scipy: top - score, so "mean score >= threshold" is "mean distance <= top - threshold".
        top = float(max(dense.max(), threshold)) + 1.0
        distance = top - dense
        np.fill_diagonal(distance, 0.0)
        condensed = distance[np.triu_indices(len(members), k=1)]
        tree = linkage(condensed, method="average")
        labels = cut_tree(tree, len(members), top - threshold)
        for label in np.unique(labels):
            group = members[labels == label]
            if len(group) > 1:
                out.append(np.sort(group))
    return largest_first(out)
