"""Local scaling (local_scaling.py) and the relative scorer built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import local_scaling
import neighbours
import scoring


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


def test_relative_scorer_rows_equal_pair_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(15, 8)).astype(np.float32)
    monkeypatch.setattr(scoring, "pooled_features", lambda _e, images, *a: torch.from_numpy(images))
    scorer = scoring.RelativeScorer(_Identity())
    scorer.add(features[:9])
    scorer.add(features[9:])
    scorer.finish()
    unit = scoring.l2_normalise(features)
    np.testing.assert_allclose(scorer.r, local_scaling.neighbourhood_similarity(unit))
    left, right = scoring.upper_pairs(0, 15, 15)
    expected = local_scaling.scaled((unit[left] * unit[right]).sum(1), scorer.r[left], scorer.r[right])
    np.testing.assert_allclose(scorer.score(left, right), expected, atol=1e-6)
    np.testing.assert_allclose(scorer.score_rows(0, 15)[left, right], expected, atol=1e-6)


@pytest.mark.parametrize("top_k", [20, 5])
def test_candidate_search_gives_r_and_pairs_of_separate_searches_in_one_search(
    top_k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relative scorer's r and the candidate pairs share one search and equal two separate exact searches."""
    rng = np.random.default_rng(3)
    unit = scoring.l2_normalise(rng.normal(size=(400, 24)).astype(np.float32) + 1.0)
    expected_r = local_scaling.neighbourhood_similarity(unit, approximate=False)
    expected_pairs = neighbours.knn_pairs(unit, top_k, approximate=False)
    calls = []
    real_knn = neighbours.knn
    monkeypatch.setattr(neighbours, "knn", lambda *a, **kw: calls.append(a[1]) or real_knn(*a, **kw))
    scorer = scoring.RelativeScorer(_Identity())
    scorer.add_embeddings({"vectors": unit})
    scorer.finish()
    pairs = scoring.candidate_search(scorer, top_k, approximate=False)
    assert calls == [max(top_k, local_scaling.K)]  # one search, deep enough for both
    np.testing.assert_array_equal(pairs, expected_pairs)
    np.testing.assert_allclose(scorer.r, expected_r, rtol=0, atol=1e-12)
    left, right, scores, n_scored = scoring.candidate_matches(scorer, -10.0, top_k, approximate=False)
    assert n_scored == len(expected_pairs) and len(calls) == 2
    np.testing.assert_allclose(scores, local_scaling.scaled(np.einsum("ij,ij->i", unit[left], unit[right]),
                                                            expected_r[left], expected_r[right]), atol=1e-6)
