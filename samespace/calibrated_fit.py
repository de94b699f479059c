"""Fit the calibrated score (samespace.calibrated_score) on training splits: its background, its four weights and
its default threshold.

    samespace calibrate --fit-calibrated samespace/data --sample-root data/real --generated

1. Each ``<root>/Training Data`` is embedded as the ``calibrated`` method embeds photos (GeM Lite0 vectors and SIFT
   keypoints). Places come from the file names (samespace.labelling).
2. The background is the first photo (in path order) of every place of every split.
3. Every unique pair of a split gives (cosine, mean background similarity, inliers). A photo's background
   similarity leaves out its own place (its duplicates are no background); inliers are counted for pairs with
   cosine >= ``calibrated_score.VERIFY_COSINE`` (others count 0), as the finder counts them.
4. A logistic regression (scikit-learn, C = :data:`C`) on all pairs, each split weighing the same.
5. The threshold: the best mean group F1 (grouping.linked_groups: the finder's average-linkage groups) over
   collections of each split thinned to :data:`SHARES` of places with duplicates
   (samespace.devsets.prevalence, :data:`DRAWS` draws), on a grid of probabilities.

Only training splits are read: the Test Data stays a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samespace import background, calibrated_score, decoding, labelling, matching, verification

C = 10.0  # inverse L2 strength: four weights on tens of thousands of pairs need little
SHARES = (1.0, 0.3, 0.1)
DRAWS = 3
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass
class SplitFeatures:
    """One training split: its photos' unit vectors, keypoints and place labels."""

    name: str
    vectors: np.ndarray
    keypoints: Sequence[verification.LocalFeatures]
    labels: np.ndarray


def embed_split(split_dir: Path, name: str) -> SplitFeatures:
    """Decode and embed every photo of a labelled split as the calibrated method does."""
    paths = labelling.find_images(split_dir)
    images, aspects, kept, _ = decoding.decode_images(paths, progress=False)
    return embed_decoded(images, aspects, labelling.group_ids([paths[k] for k in kept], split_dir), name)


def embed_decoded(images: np.ndarray, aspects: np.ndarray, labels: np.ndarray, name: str) -> SplitFeatures:
    """Embed one split's decoded photos (:func:`decoding.decode_images`), whose places are ``labels``, as the
    calibrated method does."""
    from samespace import scorers

    scorer = scorers.reference_scorer("verified")  # the same embeddings: GeM Lite0 vectors and keypoints
    scorer.add(images, aspects)
    scorer.finish()
    assert isinstance(scorer, scorers.VerifiedScorer)
    return SplitFeatures(name, scorer.vectors, scorer.keypoints, labels)


def background_of(splits: Sequence[SplitFeatures]) -> tuple[np.ndarray, list[str]]:
    """The first photo of every place of every split, and its place (``<split>:<label>``)."""
    vectors, places = [], []
    for split in splits:
        _, first = np.unique(split.labels, return_index=True)
        vectors.append(split.vectors[np.sort(first)])
        places += [f"{split.name}:{split.labels[k]}" for k in np.sort(first)]
    return np.concatenate(vectors), places


def pair_features(split: SplitFeatures, bank: np.ndarray, places: Sequence[str],
                  unique: bool = True) -> dict[str, np.ndarray]:
    """(cosine, background, inliers, same) of every unique pair of a split; ``unique``: one match per keypoint in
    the inlier count (:func:`verification.match`), as the finder counts."""
    n = len(split.vectors)
    own = np.array(places)[None, :] == np.array([f"{split.name}:{label}" for label in split.labels])[:, None]
    b = background.similarity(split.vectors, bank, exclude=own)
    left, right = matching.upper_pairs(0, n, n)
    cosine = np.einsum("ij,ij->i", split.vectors[left], split.vectors[right]).astype(np.float64)
    inliers = np.zeros(len(left), np.int64)
    verify = cosine >= calibrated_score.VERIFY_COSINE
    inliers[verify] = [m.inliers for m in verification.match_pairs(split.keypoints, left[verify], right[verify],
                                                                    unique)]
    return {"left": left, "right": right, "cosine": cosine, "background": 0.5 * (b[left] + b[right]),
            "inliers": inliers, "same": split.labels[left] == split.labels[right]}


def fit_coefficients(features: Sequence[dict[str, np.ndarray]]) -> calibrated_score.Coefficients:
    """The logistic regression of ``same`` on (cosine, background, evidence), each split weighing the same."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([np.stack([f["cosine"], f["background"], calibrated_score.evidence(f["inliers"])], 1)
                        for f in features])
    y = np.concatenate([f["same"] for f in features])
    weights = np.concatenate([np.full(len(f["same"]), len(y) / (len(features) * len(f["same"]))) for f in features])
    model = LogisticRegression(C=C, max_iter=1000).fit(x, y, sample_weight=weights)
    w = model.coef_[0]
    return calibrated_score.Coefficients(float(model.intercept_[0]), float(w[0]), float(w[1]), float(w[2]))


def thinned_group_f1(split: SplitFeatures, probabilities: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """Group precision / recall / F1 at ``threshold`` on collections of the split thinned to each share."""
    from samespace import grouping
    from samespace.devsets import prevalence

    n = len(split.labels)
    dense = np.zeros((n, n))
    left, right = matching.upper_pairs(0, n, n)
    dense[left, right] = probabilities
    dense += dense.T
    files = [str(k) for k in range(n)]
    out = []
    for share in SHARES:
        for seed in range(1 if share == 1.0 else DRAWS):
            kept = np.array([int(f) for f in prevalence.choose(files, split.labels, share, None, seed).files])
            m = len(kept)
            a, b = matching.upper_pairs(0, m, m)
            truth = split.labels[kept][a] == split.labels[kept][b]
            groups = grouping.linked_groups(m, a, b, dense[kept[a], kept[b]], threshold)
            found = grouping.same_group(m, groups, a, b)
            tp, fp, fn = int((found & truth).sum()), int((found & ~truth).sum()), int((~found & truth).sum())
            out.append({"share": share, "seed": seed, "f1": 2 * tp / max(2 * tp + fp + fn, 1),
                        "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)})
    return out


def fit(roots: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Fit on every ``<root>/Training Data`` and write ``background.npz`` and ``calibrated.json`` into ``out_dir``.

    Returns the figures written into the JSON (coefficients, threshold, per-split group F1 at each grid point).
    """
    from samespace import scoring_methods

    splits = [embed_split(Path(root) / "Training Data", Path(root).name) for root in roots]
    bank, places = background_of(splits)
    features = [pair_features(s, bank, places) for s in splits]
    coefficients = fit_coefficients(features)
    probabilities = [coefficients.probability(f["cosine"], f["background"], f["inliers"]) for f in features]
    grid = []
    for threshold in THRESHOLD_GRID:
        per_split = {s.name: thinned_group_f1(s, p, threshold) for s, p in zip(splits, probabilities, strict=True)}
        mean = float(np.mean([np.mean([r["f1"] for r in rows]) for rows in per_split.values()]))
        grid.append({"threshold": threshold, "mean_group_f1": mean,
                     **{name: float(np.mean([r["f1"] for r in rows])) for name, rows in per_split.items()}})
    best = max(grid, key=lambda g: (g["mean_group_f1"], -abs(g["threshold"] - 0.5)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    background.save(out_dir / background.BANK_FILE.name, bank, scoring_methods.COSINE_BACKBONE,
                    scoring_methods.RELATIVE_POOLING, places)
    provenance = {"threshold": best["threshold"], "splits": {s.name: {"photos": len(s.labels),
                  "pairs": len(f["same"]), "duplicates": int(f["same"].sum())} for s, f in zip(splits, features,
                                                                                                 strict=True)},
                  "background_photos": len(places), "verify_cosine": calibrated_score.VERIFY_COSINE, "C": C,
                  "shares": list(SHARES), "draws": DRAWS, "grid": grid}
    calibrated_score.save(out_dir / calibrated_score.COEFFICIENTS_FILE.name, coefficients, provenance)
    return {"coefficients": coefficients, **provenance}
