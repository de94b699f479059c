"""Candidate search: exact and approximate nearest neighbours, pairs, cross pairs, recall."""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pytest

from samespace import matching, neighbours, scorers, scoring_methods
from samespace.commands import find


@pytest.mark.parametrize("approximate", [False, True])
def test_knn_pairs_are_unique_unordered_without_self_pairs(approximate: bool) -> None:
    rng = np.random.default_rng(0)
    vectors = scorers.l2_normalise(rng.normal(size=(300, 16)))
    vectors[10] = vectors[3]  # an exact duplicate: ties with self
    pairs = neighbours.knn_pairs(vectors, 4, approximate=approximate)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len(np.unique(pairs, axis=0)) == len(pairs)
    assert [3, 10] in pairs.tolist()
    # every image's true nearest neighbour is among its candidates
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -2)
    found = {tuple(p) for p in pairs.tolist()}
    for i, j in enumerate(sims.argmax(1)):
        assert (min(i, j), max(i, j)) in found
    codes = rng.integers(0, 2**63, 40, dtype=np.uint64)
    binary = neighbours.knn_pairs(codes.astype(">u8").view(np.uint8).reshape(-1, 8), 3, approximate=approximate)
    assert (binary[:, 0] < binary[:, 1]).all() and len(binary) >= 40 * 3 // 2


def test_approximate_search_recalls_the_exact_top_k_with_pca() -> None:
    # clustered 64-d rows, projected to 32 dimensions for the graph and re-ranked on all 64
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 64))
    spectrum = np.arange(1, 65) ** -0.5  # decaying, as CNN features
    vectors = scorers.l2_normalise(centres[rng.integers(0, 40, 2000)] + rng.normal(size=(2000, 64)) * spectrum)
    params = neighbours.SearchParams(pca_dim=32, pool=3)
    exact = neighbours.knn(vectors, 10, approximate=False)
    approx = neighbours.knn(vectors, 10, approximate=True, params=params)
    assert approx.shape == exact.shape == (2000, 10)
    assert (approx != np.arange(2000)[:, None]).all()  # no row is its own neighbour
    assert neighbours.recall_at_k(approx, exact) >= 0.99
    assert neighbours.recall_at_k(exact, exact) == 1.0
    assert neighbours.recall_at_k(np.full_like(exact, -1), exact) == 0.0


def test_cross_pairs_only_join_queries_to_the_base() -> None:
    rng = np.random.default_rng(2)
    base = scorers.l2_normalise(rng.normal(size=(100, 8)))
    queries = base[[5, 50]] + 1e-3  # near copies of two base rows
    for approximate in (False, True):
        pairs = neighbours.cross_knn_pairs(queries, base, 3, approximate=approximate)
        assert pairs.shape == (6, 2)
        assert set(pairs[:, 0].tolist()) == {0, 1} and (pairs[:, 1] < 100).all()
        assert [0, 5] in pairs.tolist() and [1, 50] in pairs.tolist()


def test_default_switches_to_approximate_above_the_exact_limit() -> None:
    assert not neighbours.use_approximate(neighbours.EXACT_LIMIT, None)
    assert neighbours.use_approximate(neighbours.EXACT_LIMIT + 1, None)
    assert neighbours.use_approximate(10, True) and not neighbours.use_approximate(10**7, False)


def test_large_collections_use_the_fast_parameters_and_still_find_near_duplicates() -> None:
    assert neighbours.params_for(neighbours.ACCURATE_LIMIT) == neighbours.ACCURATE
    assert neighbours.params_for(neighbours.ACCURATE_LIMIT + 1) == neighbours.FAST
    # the fast parameters (a smaller graph; 8 projected axes of 32 here) on 1,500 rows with 50 planted near copies
    rng = np.random.default_rng(3)
    spectrum = np.arange(1, 33) ** -0.5
    vectors = scorers.l2_normalise(1.0 + rng.normal(size=(1500, 32)) * spectrum)
    copies = rng.choice(1500, 100, replace=False)
    vectors[copies[50:]] = scorers.l2_normalise(vectors[copies[:50]] + rng.normal(size=(50, 32)) * spectrum * 0.05)
    fast = dataclasses.replace(neighbours.FAST, pca_dim=8)
    pairs = {tuple(p) for p in neighbours.knn_pairs(vectors, 5, approximate=True, params=fast).tolist()}
    planted = {(min(a, b), max(a, b)) for a, b in zip(copies[:50].tolist(), copies[50:].tolist(), strict=True)}
    assert planted <= pairs
    # the smaller graph itself (no projection) still recalls nearly all of the exact top-5
    exact = neighbours.knn(vectors, 5, approximate=False)
    graph_only = dataclasses.replace(neighbours.FAST, pca_dim=32)
    assert neighbours.recall_at_k(neighbours.knn(vectors, 5, approximate=True, params=graph_only), exact) >= 0.97


def test_find_matches_switches_between_exhaustive_exact_and_approximate_candidates() -> None:
    import torch


    rng = np.random.default_rng(4)
    vectors = scorers.l2_normalise(1.0 + rng.normal(size=(600, 24)))
    vectors[300:320] = scorers.l2_normalise(vectors[:20] + rng.normal(size=(20, 24)) * 0.02)  # 20 near copies
    scorer = scorers.CosineScorer(torch.nn.Identity())
    scorer.add_embeddings({"vectors": vectors.astype(np.float32)})
    scorer.finish()
    results = {
        approximate: matching.find_matches(scorer, 0.95, approximate=approximate) for approximate in (None, False, True)
    }
    assert [r[4] for r in results.values()] == [
        "exhaustive",
        "exhaustive",
        f"top-{scoring_methods.DEFAULT_TOP_K} approximate",
    ]
    exhaustive = set(zip(results[None][0].tolist(), results[None][1].tolist(), strict=True))
    assert {(i, 300 + i) for i in range(20)} <= exhaustive
    approx = set(zip(results[True][0].tolist(), results[True][1].tolist(), strict=True))
    assert approx == exhaustive and np.allclose(results[True][2], results[None][2])  # same pairs, exact scores
    exact_top_k = matching.find_matches(scorer, 0.95, top_k=5, approximate=False)
    assert exact_top_k[4] == "top-5"
    assert set(zip(exact_top_k[0].tolist(), exact_top_k[1].tolist(), strict=True)) == exhaustive
    parser = find.build_parser()
    assert parser.parse_args(["x", "--approximate"]).approximate is True
    assert parser.parse_args(["x", "--exact"]).approximate is False
    assert parser.parse_args(["x"]).approximate is None
    with pytest.raises(SystemExit):
        parser.parse_args(["x", "--approximate", "--exact"])


def test_rerank_in_place_matches_the_gathered_rerank() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(size=(500, 40)).astype(np.float32)
    queries = base[:64]
    candidates = rng.integers(0, 500, size=(64, 12))
    candidates[3, 5:] = -1  # fewer candidates found: -1 goes last
    in_place = neighbours.rerank_candidates(base, queries, candidates, 6)  # float32 rows: faiss reads them in place
    gathered = neighbours.rerank_candidates(base.astype(np.float64), queries, candidates, 6)  # any other dtype: numpy
    assert (in_place == gathered).all()
    assert in_place[3, 5] == -1 and (in_place[3, :5] >= 0).all()
    sims = np.einsum("qd,qkd->qk", queries, base[candidates[0]][None])[0]
    assert in_place[0].tolist() == candidates[0][np.argsort(-sims, kind="stable")[:6]].tolist()


def test_local_join_finds_neighbours_of_neighbours_and_keeps_exact_lists() -> None:
    rng = np.random.default_rng(5)
    unit = rng.normal(size=(300, 3)).astype(np.float32)  # low dimension: a neighbour's neighbours are near
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    truth = neighbours.exact_knn(unit, unit, 8)
    np.testing.assert_array_equal(neighbours.local_join(unit, truth, 4, block=64), truth)  # nothing to improve
    degraded = truth.copy()
    lost = rng.random(degraded.shape) < 0.4
    lost[:, 0] = False  # each row keeps itself
    degraded[lost] = -1
    joined = neighbours.local_join(unit, degraded, 4, block=64)
    before, after = neighbours.recall_at_k(degraded, truth), neighbours.recall_at_k(joined, truth)
    assert before < 0.7 and after > before + 0.08  # measured: 0.647 -> 0.754
    assert all(len(set(row[row >= 0])) == len(row[row >= 0]) for row in joined)  # no repeated neighbour


def test_pair_and_neighbour_inner_products_equal_numpy_and_check_indices() -> None:
    rng = np.random.default_rng(5)
    base = rng.standard_normal((50, 24)).astype(np.float32)
    left, right = rng.integers(0, 50, 200), rng.integers(0, 50, 200)
    expected = np.einsum("ij,ij->i", base[left], base[right])
    np.testing.assert_allclose(neighbours.pair_inner_products(base, left, right), expected, rtol=1e-5, atol=1e-5)
    assert neighbours.pair_inner_products(base, left[:0], right[:0]).shape == (0,)
    with pytest.raises(IndexError, match="0..49"):
        neighbours.pair_inner_products(base, np.array([0]), np.array([50]))
    with pytest.raises(ValueError, match="differ in length"):
        neighbours.pair_inner_products(base, left, right[:3])
    ids = rng.integers(0, 50, (50, 4))
    ids[7, 2] = -1
    sims = neighbours.neighbour_inner_products(base, ids)
    np.testing.assert_allclose(sims[ids >= 0], np.einsum("id,ikd->ik", base, base[ids])[ids >= 0], rtol=1e-5, atol=1e-5)
    assert sims[7, 2] == -np.inf
    queries = base[10:20]
    np.testing.assert_allclose(neighbours.neighbour_inner_products(base, ids[10:20], queries), sims[10:20])
    with pytest.raises(ValueError, match="one row per query"):
        neighbours.neighbour_inner_products(base, ids[:5])


def test_float16_graph_holds_half_the_bytes_and_finds_the_float32_graphs_neighbours() -> None:
    rng = np.random.default_rng(6)
    spectrum = np.arange(1, 33) ** -0.5
    vectors = scorers.l2_normalise(1.0 + rng.normal(size=(2000, 32)) * spectrum).astype(np.float32)
    params = neighbours.SearchParams(pca_dim=32, hnsw_m=16, ef_construction=40, ef_search=32, pool=3)
    half = dataclasses.replace(params, float16=True)
    graph = neighbours.build_graph(vectors, None, half)
    assert isinstance(graph, faiss.IndexHNSWSQ) and graph.ntotal == 2000
    assert graph.storage.sa_code_size() == 32 * 2  # float32 rows: 32 * 4
    assert neighbours.build_graph(vectors[:10], None, params).storage.sa_code_size() == 32 * 4
    exact = neighbours.knn(vectors, 10, approximate=False)
    found16 = neighbours.knn(vectors, 10, approximate=True, params=half)
    found32 = neighbours.knn(vectors, 10, approximate=True, params=params)
    # the exact re-rank repairs float16's rounding: both graphs recall the exact top-10 alike
    assert neighbours.recall_at_k(found16, exact) >= 0.99
    assert abs(neighbours.recall_at_k(found16, exact) - neighbours.recall_at_k(found32, exact)) <= 0.005


def test_graph_is_added_in_few_large_blocks_with_rows_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """faiss sets up a lock per node of the whole index on every add call: rows go in add_block at a time, in order."""
    rng = np.random.default_rng(7)
    vectors = scorers.l2_normalise(rng.normal(size=(2000, 16))).astype(np.float32)
    calls: list[int] = []
    project = neighbours.project

    def counted(x: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
        calls.append(len(x))
        return project(x, projection)

    monkeypatch.setattr(neighbours, "project", counted)
    params = neighbours.SearchParams(pca_dim=16, hnsw_m=8, ef_construction=20, add_block=700)
    graph = neighbours.build_graph(vectors, None, params)
    assert calls == [700, 700, 600]
    np.testing.assert_allclose(graph.reconstruct_n(0, 2000), vectors, atol=1e-6)  # row i is node i
    calls.clear()
    neighbours.build_graph(vectors, None, dataclasses.replace(params, add_block=neighbours.FAST.add_block))
    assert calls == [2000] and neighbours.FAST.add_block >= 65_536
