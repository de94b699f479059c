"""Training pairs of the improved recipe (``views: reshoot``): positives over re-shoot views, mined negatives.

Each image has ``n_views`` (at most 8) views in the feature table (view 0 the plain image, the others random
re-shoots, see ``views.py``). A pair's flags hold the view of each side, as the published variants do
(``pair_sampling.pair_variants``), so ``feature_cache.pair_rows`` finds its rows.

- **Positives**: every unordered pair i < j of a group with each of the n_views^2 view combinations, and
  every image with itself under two *different* views (n_views^2 - n_views): a self-pair is a positive only when
  its two sides differ (no identical inputs labelled "same").
- **Negatives**: as many as the positives, each with a uniformly random view combination, the same
  distribution the positives draw from, so the views say nothing about the label (no shortcut).
  ``negatives="cosine"``: half of them are hard, each image paired with its ``hard_per_image`` most
  cosine-similar images of other groups (look-alike rooms, found on the plain view's pooled features);
  the other half, and all of them with ``negatives="whash"``, come from the published wHash-weighted sampler.
"""

from __future__ import annotations

import numpy as np

from samespace import pair_sampling, preprocess

NEGATIVE_MINING = ("whash", "cosine")


def hard_negative_pairs(unit: np.ndarray, groups: np.ndarray, per_image: int) -> np.ndarray:
    """Each image's ``per_image`` most similar images of other groups (cosine of unit rows), as unique pairs
    ``(i, j)``, i < j, sorted; (M, 2) int64."""
    groups = np.asarray(groups)
    sims = np.asarray(unit, np.float32) @ np.asarray(unit, np.float32).T
    sims[groups[:, None] == groups[None, :]] = -np.inf  # duplicates (and the image itself) are not negatives
    k = min(per_image, max(len(groups) - 1, 0))
    if k == 0:
        return np.zeros((0, 2), np.int64)
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    left = np.repeat(np.arange(len(groups)), k)
    right = nearest.ravel()
    keep = np.isfinite(sims[left, right])
    left, right = left[keep], right[keep]
    codes = np.unique(np.minimum(left, right) * len(groups) + np.maximum(left, right))
    return np.stack([codes // len(groups), codes % len(groups)], axis=1).astype(np.int64)


def reshoot_pairs(
    groups: np.ndarray,
    hashes: np.ndarray,
    unit: np.ndarray | None = None,
    negatives: str = "cosine",
    hard_per_image: int = 10,
    seed: int = 0,
    n_views: int = preprocess.N_VARIANTS,
) -> pair_sampling.PairSet:
    """The training pairs described in the module docstring. ``unit``: L2-normalised plain-view features
    (N, D), needed for ``negatives="cosine"``; ``hashes``: wHash codes for the published sampler."""
    if negatives not in NEGATIVE_MINING:
        raise ValueError(f"negatives must be one of {NEGATIVE_MINING}, got {negatives!r}")
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    if not 1 <= n_views <= preprocess.N_VARIANTS:
        raise ValueError(f"n_views must be in 1..{preprocess.N_VARIANTS}, got {n_views}")
    views1, views2 = np.meshgrid(np.arange(n_views), np.arange(n_views), indexing="ij")
    combos = (views1 + preprocess.N_VARIANTS * views2).ravel().astype(np.uint8)  # view1 | view2 << 3
    distinct = combos[combos % preprocess.N_VARIANTS != combos // preprocess.N_VARIANTS]
    others = pair_sampling.positive_pairs(groups, "unique")
    selves = np.arange(len(groups), dtype=np.int64)
    pos_left = np.concatenate([np.repeat(others[:, 0], len(combos)), np.repeat(selves, len(distinct))])
    pos_right = np.concatenate([np.repeat(others[:, 1], len(combos)), np.repeat(selves, len(distinct))])
    pos_flags = np.concatenate([np.tile(combos, len(others)), np.tile(distinct, len(selves))])

    wanted = len(pos_left)
    hard = np.zeros((0, 2), np.int64)
    if negatives == "cosine":
        if unit is None:
            raise ValueError("negatives='cosine' needs the images' unit features")
        mined = hard_negative_pairs(unit, groups, hard_per_image)
        if len(mined):
            hard = mined[rng.integers(0, len(mined), wanted // 2)]  # each mined pair under many random views
    sampled = pair_sampling.sample_negative_pairs(hashes, groups, wanted - len(hard), pairing="unique", seed=seed)
    if len(sampled) and len(sampled) < wanted - len(hard):  # small splits: fewer negatives than asked, reuse them
        sampled = sampled[rng.integers(0, len(sampled), wanted - len(hard))]
    neg = np.concatenate([hard, sampled])
    neg_flags = rng.integers(0, len(combos), len(neg)).astype(np.uint8)
    return pair_sampling.PairSet(
        left=np.concatenate([pos_left, neg[:, 0]]).astype(np.int64),
        right=np.concatenate([pos_right, neg[:, 1]]).astype(np.int64),
        label=np.concatenate([np.ones(len(pos_left), np.uint8), np.zeros(len(neg), np.uint8)]),
        flags=np.concatenate([pos_flags, neg_flags]).astype(np.uint8),
    )
