"""Local scaling (local_scaling.py) and the relative scorer built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samespace import local_scaling, matching, neighbours, scorers, scoring_methods


def _unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_neighbourhood_similarity_is_the_mean_cosine_to_the_k_nearest_others() -> None:
    unit = _unit([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]])
    r = local_scaling.neighbourhood_similarity(unit, k=2, r0=0.0)
    c = 1 / np.sqrt(2)
    # row 0: nearest others are row 1 (cos 0.707) and row 2 or 3 (cos 0); row 1: rows 0 and 2 (0.707 each)
    np.testing.assert_allclose(r, [c / 2, c, c / 2, 0.0], atol=1e-6)


def test_missing_neighbours_count_as_r0() -> None:
    unit = _unit([[1, 0], [1, 1]])
    c = 1 / np.sqrt(2)
    np.testing.assert_allclose(local_scaling.neighbourhood_similarity(unit, k=4, r0=0.5), [(c + 1.5) / 4] * 2)
    np.testing.assert_allclose(local_scaling.neighbourhood_similarity(unit[:1], k=4, r0=0.5), [0.5])


def test_scaled_score_subtracts_the_mean_neighbourhood() -> None:
    assert local_scaling.scaled(np.array([0.9]), np.array([0.6]), np.array([0.8]), beta=0.5)[0] == pytest.approx(0.55)


def test_one_pair_scores_lower_among_look_alikes_than_among_varied_photos() -> None:
    """The point of local scaling: the same cosine means less in a collection of look-alike photos."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 64))
    pair = _unit(np.concatenate([base, base + 0.6 * rng.normal(size=(1, 64))]).tolist())
    look_alikes = _unit((base + 1.2 * rng.normal(size=(30, 64))).tolist())  # all near the pair
    varied = _unit(rng.normal(size=(30, 64)).tolist())
    scores = []
    for others in (look_alikes, varied):
        unit = np.concatenate([pair, others])
        r = local_scaling.neighbourhood_similarity(unit)
        scores.append(local_scaling.scaled(unit[0] @ unit[1], r[0], r[1]))
    assert scores[0] < scores[1] - 0.1


class _Identity(torch.nn.Module):
    """A stand-in extractor: the 'image' is its own feature vector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _dba_reference(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """local_scaling's augmented vectors and their r, written out densely (numpy, brute force) to check it against."""
    n, k = len(unit), local_scaling.K
    sims = (unit @ unit.T).astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, 1, kind="stable")[:, : min(k, n - 1)]
    near = np.take_along_axis(sims, order, 1)
    r = (near.sum(1) + (k - order.shape[1]) * local_scaling.R0) / k
    m = min(local_scaling.DBA_K, order.shape[1])
    weights = np.clip((near[:, :m] - r[:, None]) / (1 - r[:, None]), 0, 1)
    augmented = unit + np.einsum("nk,nkd->nd", weights, unit[order[:, :m]])
    augmented /= np.linalg.norm(augmented, axis=1, keepdims=True)
    near_augmented = np.take_along_axis(augmented @ augmented.T, order, 1)
    r_augmented = (near_augmented.sum(1) + (k - order.shape[1]) * local_scaling.R0_AUGMENTED) / k
    return augmented, r_augmented


def test_relative_scorer_rows_equal_pair_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(15, 8)).astype(np.float32)
    monkeypatch.setattr(scorers, "pooled_features", lambda _e, images, *a: torch.from_numpy(images))
    scorer = scorers.RelativeScorer(_Identity())
    scorer.add(features[:9])
    scorer.add(features[9:])
    scorer.finish()
    unit = scorers.l2_normalise(features)
    np.testing.assert_allclose(scorer.cosine_r, local_scaling.neighbourhood_similarity(unit))
    augmented, r_augmented = _dba_reference(unit)
    np.testing.assert_allclose(scorer.r, r_augmented, atol=1e-6)
    left, right = matching.upper_pairs(0, 15, 15)
    expected = local_scaling.scaled((augmented[left] * augmented[right]).sum(1), r_augmented[left], r_augmented[right])
    np.testing.assert_allclose(scorer.score(left, right), expected, atol=1e-6)
    np.testing.assert_allclose(scorer.score_rows(0, 15)[left, right], expected, atol=1e-6)
    assert not np.allclose(scorer.score(left, right), local_scaling.scaled(  # the augmentation changes the scores
        (unit[left] * unit[right]).sum(1), scorer.cosine_r[left], scorer.cosine_r[right]), atol=1e-3)


def test_augmentation_adds_only_neighbours_above_the_photos_own_neighbourhood() -> None:
    """DBA weight = clip((cos - r_i) / (1 - r_i), 0, 1): a neighbour at r_i or below adds nothing."""
    unit = _unit([[1, 0, 0], [0.9, np.sqrt(1 - 0.81), 0], [0, 0, 1], [0, 1, 1]])
    ids = neighbours.knn(unit, 3, approximate=False)
    r = np.array([0.5, 0.5, 0.95, 0.5])
    recipe = local_scaling.augmentation(unit, ids, r)
    np.testing.assert_array_equal(recipe.ids[:, 0], np.arange(4))  # each row first, weight 1
    np.testing.assert_allclose(recipe.weights[:, 0], 1.0)
    assert recipe.ids[0, 1] == 1 and recipe.weights[0, 1] == pytest.approx((0.9 - 0.5) / 0.5, abs=1e-6)
    assert recipe.weights[2].tolist() == [1.0, 0.0, 0.0]  # row 2's best neighbour (0.707) is below its r (0.95)
    vectors = local_scaling.augmented_vectors(unit, recipe)
    np.testing.assert_allclose(vectors[2], unit[2], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    left, right = matching.upper_pairs(0, 4, 4)
    np.testing.assert_allclose(local_scaling.augmented_cosine(unit, recipe, left, right),
                               (vectors[left] * vectors[right]).sum(1), atol=1e-6)


def test_augmentation_pulls_copies_of_one_photo_together_and_leaves_unrelated_pairs() -> None:
    """Three re-shoots of one photo among unrelated photos: their augmented cosines rise, unrelated ones barely move."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=64)
    copies = _unit([(base + 0.8 * rng.normal(size=64)).tolist() for _ in range(3)])
    others = _unit((rng.normal(size=(40, 64)) + 0.3 * base).tolist())
    unit = np.concatenate([copies, others]).astype(np.float32)
    ids = neighbours.knn(unit, local_scaling.K, approximate=False)
    recipe = local_scaling.augmentation(unit, ids, local_scaling.neighbourhood_similarity(unit, ids=ids))
    left, right = np.array([0, 0, 1, 3, 5]), np.array([1, 2, 2, 4, 6])
    plain = (unit[left] * unit[right]).sum(1)
    augmented = local_scaling.augmented_cosine(unit, recipe, left, right)
    assert (augmented[:3] > plain[:3] + 0.1).all()
    assert np.abs(augmented[3:] - plain[3:]).max() < 0.1


def test_an_all_zero_vector_scores_zero_cosine_and_leaves_the_others_finite() -> None:
    """A photo whose features are all zero (cosine 0 to every photo) must not turn the collection's scores into NaN."""
    unit = np.zeros((6, 4), np.float32)
    unit[1:] = scorers.l2_normalise(np.random.default_rng(5).normal(size=(5, 4)))
    scorer = scorers.RelativeScorer(_Identity())
    scorer.add_embeddings({"vectors": unit})
    scorer.finish()
    left, right = matching.upper_pairs(0, 6, 6)
    scores = scorer.score(left, right)
    assert np.isfinite(scores).all() and np.isfinite(scorer.score_rows(0, 6)).all()
    np.testing.assert_allclose(local_scaling.augmented_cosine(unit, scorer.augmented, left[:5], right[:5]), 0.0)


def test_a_pair_alone_scores_as_in_a_typical_collection() -> None:
    """Two photos alone: missing neighbours count as R0 (weights) and R0_AUGMENTED (score). The pair is reported
    from a cosine of about 0.69 (0.73 without the augmentation): unrelated-looking pairs stay under the default."""
    scores = {}
    for c in (0.6, 0.65, 0.75, 0.95):
        scorer = scorers.RelativeScorer(_Identity())
        scorer.add_embeddings({"vectors": _unit([[1, 0], [c, np.sqrt(1 - c * c)]])})
        scorer.finish()
        scores[c] = scorer.score(np.array([0]), np.array([1]))[0]
        # with no neighbour above r, the vectors are not augmented: the plain cosine, scaled with R0_AUGMENTED
        r = (c + (local_scaling.K - 1) * local_scaling.R0) / local_scaling.K
        if c <= r:
            assert scorer.augmented.weights[:, 1].tolist() == [0.0, 0.0]
    threshold = scoring_methods.DEFAULT_THRESHOLDS["relative"]
    assert scores[0.6] < scores[0.65] < threshold < scores[0.75] < scores[0.95]  # reported from cosine ~0.69


@pytest.mark.parametrize("top_k", [20, 5])
def test_candidate_search_gives_r_and_pairs_of_separate_searches_in_one_search(
    top_k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relative scorer's r and the candidate pairs share one search and equal two separate exact searches."""
    rng = np.random.default_rng(3)
    unit = scorers.l2_normalise(rng.normal(size=(400, 24)).astype(np.float32) + 1.0)
    expected_r = local_scaling.neighbourhood_similarity(unit, approximate=False)
    expected_pairs = neighbours.knn_pairs(unit, top_k, approximate=False)
    augmented, r_augmented = _dba_reference(unit)
    calls = []
    real_knn = neighbours.knn
    monkeypatch.setattr(neighbours, "knn", lambda *a, **kw: calls.append(a[1]) or real_knn(*a, **kw))
    scorer = scorers.RelativeScorer(_Identity())
    scorer.add_embeddings({"vectors": unit})
    scorer.finish()
    pairs = matching.candidate_search(scorer, top_k, approximate=False)
    assert calls == [max(top_k, local_scaling.K)]  # one search, deep enough for both
    np.testing.assert_array_equal(pairs, expected_pairs)
    np.testing.assert_allclose(scorer.cosine_r, expected_r, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scorer.r, r_augmented, rtol=0, atol=1e-6)
    left, right, scores, n_scored = matching.candidate_matches(scorer, -10.0, top_k, approximate=False)
    assert n_scored == len(expected_pairs) and len(calls) == 2
    np.testing.assert_allclose(scores, local_scaling.scaled(np.einsum("ij,ij->i", augmented[left], augmented[right]),
                                                            r_augmented[left], r_augmented[right]), atol=1e-6)
