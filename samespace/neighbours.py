"""Candidate search: each image's nearest neighbours, exact up to a size, approximate (faiss HNSW) above it.

Vectors are either float rows compared by inner product (unit rows: inner product = cosine) or uint8 rows of
packed hash bits compared by Hamming distance.

- Exact: ``IndexFlatIP`` / ``IndexBinaryFlat``: N^2 distance computations, the reference.
- Approximate (:func:`use_approximate`: above :data:`EXACT_LIMIT` vectors, or when asked):
  float rows are projected onto their top :attr:`SearchParams.pca_dim` principal axes (uncentred PCA, so
  inner products are kept, fitted on a fixed sample of rows) and L2-normalised, an HNSW graph is built over the
  projections, each row's :attr:`SearchParams.pool` x k approximate neighbours are fetched and then re-ranked
  by the exact inner product of the full vectors, keeping the best k. Above :data:`ACCURATE_LIMIT` a self-search
  then makes one round of NN-descent's local join (:func:`local_join`: neighbours of neighbours, re-ranked
  the same way). Hash codes go into a binary HNSW graph (Hamming distances are exact, only the graph walk is
  approximate). Building HNSW costs about N log N and a query about log N, so the whole search never grows as
  N^2, but on 2 cores it grows faster than N: search + scoring + grouping x4.6-x5.0 from 250,000 to 1,000,000
  vectors in alternating runs (docs/scale.md). Rows go into the graph
  :attr:`SearchParams.add_block` at a time: faiss sets up a lock per node of the whole index on every add call, so
  small adds cost ~N^2 / (2 x block) set-ups (blocks of 2,048: build 24% slower at 1,000,000, 14% at 250,000).
  The graph's rows and links go on transparent huge pages when glibc is told to advise its large allocations:
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35, Linux with THP ``always`` or ``madvise``), as fast as
  advising faiss's buffers in code (``benchmarks/bench_huge_pages.py``). :attr:`SearchParams.float16`
  stores the graph's rows as float16 (faiss ``IndexHNSWSQ``): at 1,000,000 the build and walk take 20% less time
  for about the same share of planted pairs, so :data:`FAST` uses it.

``benchmarks/bench_neighbours.py`` measures the recall of the approximate search against exact search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

# Above this many vectors candidate search is approximate by default. Exact flat search costs N^2 * D
# multiply-adds: about a minute for 50,000 1280-d vectors on 2 CPU cores, and 4x that at 100,000, when the
# backbone pass over 50,000 photos takes about 15 minutes; the approximate search at 50,000 takes ~20 s.
EXACT_LIMIT = 50_000
SEED = 0
# Seconds spent in each step of the last approximate float search (projection, build, walk, rerank, join):
# benchmarks/bench_neighbours.py reports them, nothing else reads them.
LAST_TIMINGS: dict[str, float] = {}


@dataclass(frozen=True)
class SearchParams:
    """Parameters of the approximate float search (measured in benchmarks/bench_neighbours.py)."""

    pca_dim: int = 256  # dimensions kept for the graph; full vectors re-rank the candidates
    pca_sample: int = 50_000  # rows the projection is fitted on
    hnsw_m: int = 32  # graph degree
    ef_construction: int = 80
    ef_search: int = 128
    pool: int = 6  # fetch pool * k candidates from the graph, keep the k best by exact inner product
    join: int = 0  # > 0: one round of neighbours of neighbours (each row's first `join` x their first `join`)
    float16: bool = False  # the graph stores its projected rows as float16: half the bytes each hop reads
    block: int = 2048  # rows projected / searched / re-ranked at once (memory: block * pool * k * D floats)
    # Rows projected and added to the graph per faiss call. faiss (1.15) sets up one lock per node of the whole
    # index on every add call, so adding N rows in blocks of b costs ~N^2 / (2b) lock set-ups: few large calls.
    add_block: int = 65_536


# Up to ACCURATE_LIMIT vectors: a graph over 256 projected dimensions (recall of the true top-20 >= 0.99 at
# 100,000). Above it the graph is cheaper (128 dimensions, M 24, efConstruction 80) and a local join repairs
# what the walk misses. Measured where the planted duplicate pairs of bench_neighbours.py are lost at 250,000
# (`bench_neighbours.py diagnose`): exact search over 64 / 128 projected dimensions finds 99.6% / 100%, the
# previous graph (64 dimensions, M 16, efC 40) 97.5% whether its walk starts at the top or at the query's own
# node: the graph lacked the links, so more degree and effort, not a longer walk (README "Large collections").
# FAST's graph holds float16 rows and is walked with efSearch 128: 1,000,000 vectors end to end in
# 723 s, 99.02% of the planted pairs (efSearch 64: 689 s, 98.50%; float32 rows with the older scoring: ~1,010 s
# estimated earlier, 98.45% before that).
ACCURATE = SearchParams()
FAST = SearchParams(pca_dim=128, pca_sample=50_000, hnsw_m=24, ef_construction=80, ef_search=128, pool=3, join=4,
                    float16=True)
ACCURATE_LIMIT = 200_000
DEFAULT_PARAMS = ACCURATE  # binary codes use its graph degree and efforts


def params_for(n: int) -> SearchParams:
    """The search parameters for n vectors: :data:`ACCURATE` up to :data:`ACCURATE_LIMIT`, else :data:`FAST`."""
    return ACCURATE if n <= ACCURATE_LIMIT else FAST


def use_approximate(n: int, approximate: bool | None) -> bool:
    """Whether a search over ``n`` vectors is approximate: ``approximate`` when given, else n > EXACT_LIMIT."""
    return n > EXACT_LIMIT if approximate is None else bool(approximate)


def _is_binary(vectors: np.ndarray) -> bool:
    return vectors.dtype == np.uint8


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest rows of ``base`` for each query row, (nq, k) int64, best first, -1 where fewer exist."""
    k = min(k, len(base))
    if _is_binary(base):
        index: Any = faiss.IndexBinaryFlat(base.shape[1] * 8)
        index.add(np.ascontiguousarray(base))
        _, ids = index.search(np.ascontiguousarray(queries), k)
    else:
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(np.ascontiguousarray(base, dtype=np.float32))
        _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return ids.astype(np.int64)


def pca_projection(vectors: np.ndarray, dim: int, sample: int = 20_000, seed: int = SEED) -> np.ndarray:
    """(D, dim) float32: the top ``dim`` eigenvectors of the uncentred second-moment matrix of a row sample.

    Uncentred, so ``(x P) . (y P)`` approximates ``x . y`` (centring would change inner products).
    """
    n = len(vectors)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
    x = np.asarray(vectors[rows], dtype=np.float32)
    _, eigenvectors = np.linalg.eigh((x.T @ x).astype(np.float64))  # ascending eigenvalues
    return np.ascontiguousarray(eigenvectors[:, ::-1][:, :dim], dtype=np.float32)


def project(vectors: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    """Rows projected (when a projection is given) and L2-normalised, float32."""
    x = np.asarray(vectors, dtype=np.float32)
    y = x if projection is None else x @ projection
    return np.ascontiguousarray(y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12))


# Not faiss.IndexRefineFlat: same neighbour sets (20,000 rows), but no faster, and it keeps its own copy of the
# full rows (5 GB at 1,000,000 x 1280) where this reads them in place; local_join re-ranks with this too.
def rerank_candidates(base: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The k candidates with the largest exact inner product per query row (-1 candidates last)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    if base.dtype == np.float32 and base.flags.c_contiguous:
        # faiss reads the candidate rows in place: ~15x faster than gathering them with numpy
        sims = neighbour_inner_products(base, candidates, queries)
    else:  # e.g. float16 rows: gathered and converted block by block (never the whole base converted)
        rows = np.asarray(base[np.maximum(candidates, 0)], dtype=np.float32)  # (b, pool, D)
        sims = np.matmul(rows, queries[:, :, None])[:, :, 0]
    sims[candidates < 0] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidates, order, axis=1)


def _unique_candidates(candidates: np.ndarray) -> np.ndarray:
    """Each row's candidate ids with repeats replaced by -1 (rows come back sorted, -1 entries first)."""
    out = np.sort(candidates, axis=1)
    out[:, 1:][out[:, 1:] == out[:, :-1]] = -1
    return out


def local_join(base: np.ndarray, ids: np.ndarray, width: int, block: int = 2048) -> np.ndarray:
    """One round of NN-descent's local join over a self-search result: better neighbour lists, same shape.

    Each row's candidates are its own list and, for its first ``width`` neighbours, their first ``width``
    neighbours (a neighbour of a neighbour is likely a neighbour); they are re-ranked by the exact inner product
    of the full ``base`` rows. A pair the graph walk missed from both sides is found when a third photo close to
    both has found each of them (the planted duplicates of bench_neighbours: README "Large collections").
    """
    out = np.empty_like(ids)
    k = ids.shape[1]
    for start in range(0, len(ids), block):
        rows = ids[start : start + block]
        first = rows[:, :width]
        hops = ids[np.maximum(first, 0), :width]  # (b, width, width)
        hops[first < 0] = -1
        candidates = _unique_candidates(np.concatenate([rows, hops.reshape(len(rows), -1)], axis=1))
        out[start : start + len(rows)] = rerank_candidates(base, base[start : start + len(rows)], candidates, k)
    return out


def _binary_knn(base: np.ndarray, queries: np.ndarray | None, k: int, params: SearchParams) -> np.ndarray:
    """Hash codes: a binary HNSW graph (Hamming distances are exact, only the walk is approximate)."""
    index = faiss.IndexBinaryHNSW(base.shape[1] * 8, params.hnsw_m)
    index.hnsw.efConstruction = params.ef_construction
    index.add(np.ascontiguousarray(base))
    index.hnsw.efSearch = max(params.ef_search, k)
    q = base if queries is None else queries
    _, ids = index.search(np.ascontiguousarray(q), k)
    return ids.astype(np.int64)


def build_graph(base: np.ndarray, projection: np.ndarray | None, params: SearchParams) -> Any:
    """An HNSW graph (inner product) over the projected, normalised rows.

    faiss ``IndexHNSWFlat`` (float32 rows), or with :attr:`SearchParams.float16` ``IndexHNSWSQ`` with the
    ``QT_fp16`` scalar quantizer (no training): the build and the walk are bound by reading rows from memory
    (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` puts them on huge pages: module docstring).
    """
    dim = base.shape[1] if projection is None else projection.shape[1]
    if params.float16:
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    for start in range(0, len(base), params.add_block):  # projected block by block: the index holds the only copy
        index.add(project(base[start : start + params.add_block], projection))
    return index


def approximate_knn(
    base: np.ndarray, queries: np.ndarray | None, k: int, params: SearchParams | None = None
) -> np.ndarray:
    """Approximate k nearest rows of ``base`` for each query row (``None``: the base rows themselves).

    (nq, k) int64, best first, -1 where fewer were found. ``params`` None: :func:`params_for` the base size.
    See the module docstring for the method.
    """
    params = params or params_for(len(base))
    k = min(k, len(base))
    if _is_binary(base):
        return _binary_knn(base, queries, k, params)
    timings = {"projection": 0.0, "build": 0.0, "walk": 0.0, "rerank": 0.0, "join": 0.0}
    t = time.perf_counter()
    projection = None
    if base.shape[1] > params.pca_dim:
        projection = pca_projection(base, params.pca_dim, params.pca_sample)
    timings["projection"] = time.perf_counter() - t
    pool = min(len(base), max(k, params.pool * k))
    t = time.perf_counter()
    index = build_graph(base, projection, params)
    timings["build"] = time.perf_counter() - t
    index.hnsw.efSearch = max(params.ef_search, pool)
    source = base if queries is None else queries
    out = np.empty((len(source), k), np.int64)
    for start in range(0, len(source), params.block):
        q = np.asarray(source[start : start + params.block], dtype=np.float32)
        t = time.perf_counter()
        _, candidates = index.search(project(q, projection), pool)
        t2 = time.perf_counter()
        out[start : start + len(q)] = rerank_candidates(base, q, candidates.astype(np.int64), k)
        timings["walk"] += t2 - t
        timings["rerank"] += time.perf_counter() - t2
    del index
    if queries is None and params.join > 0:
        t = time.perf_counter()
        out = local_join(base, out, params.join, params.block)
        timings["join"] = time.perf_counter() - t
    LAST_TIMINGS.clear()
    LAST_TIMINGS.update(timings)
    return out


def knn(
    base: np.ndarray,
    k: int,
    queries: np.ndarray | None = None,
    approximate: bool | None = None,
    params: SearchParams | None = None,
) -> np.ndarray:
    """k nearest rows of ``base`` for each query row (``queries`` None: every base row, itself excluded).

    Returns (nq, k) int64 indices into ``base``, best first, -1 where fewer exist. ``approximate``: see
    :func:`use_approximate`.
    """
    self_search = queries is None
    k_search = k + 1 if self_search else k  # a row is (usually) its own nearest neighbour
    if use_approximate(len(base), approximate):
        ids = approximate_knn(base, queries, k_search, params)
    else:
        ids = exact_knn(base, base if self_search else queries, k_search)
    if not self_search:
        return ids
    # Drop the row itself wherever it appears (identical rows may rank it second), else the last neighbour.
    rows = np.arange(len(ids))[:, None]
    is_self = ids == rows
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), ids.shape[1] - 1)
    keep = np.ones(ids.shape, bool)
    keep[np.arange(len(ids)), drop] = False
    return ids[keep].reshape(len(ids), ids.shape[1] - 1)


def _unique_pairs(left: np.ndarray, right: np.ndarray, n_right: int, ordered: bool) -> np.ndarray:
    keep = right >= 0
    left, right = left[keep], right[keep]
    if not ordered:
        keep = left != right
        left, right = np.minimum(left[keep], right[keep]), np.maximum(left[keep], right[keep])
    codes = np.sort(left * n_right + right)  # sort + mask: numpy's hashing np.unique is ~5x slower here
    codes = codes[np.concatenate(([True], codes[1:] != codes[:-1]))] if len(codes) else codes
    return np.stack([codes // n_right, codes % n_right], axis=1).astype(np.int64)


def neighbour_pairs(ids: np.ndarray) -> np.ndarray:
    """Rows' neighbours (``ids`` from :func:`knn` over the rows themselves) as unique unordered pairs (i, j), i < j,
    sorted; (m, 2) int64. -1 entries are skipped."""
    n = len(ids)
    if n < 2 or ids.shape[1] == 0:
        return np.zeros((0, 2), np.int64)
    left = np.repeat(np.arange(n, dtype=np.int64), ids.shape[1])
    return _unique_pairs(left, np.asarray(ids, np.int64).ravel(), n, ordered=False)


def knn_pairs(
    vectors: np.ndarray, k: int, approximate: bool | None = None, params: SearchParams | None = None
) -> np.ndarray:
    """Each row's k nearest neighbours as unique unordered pairs (i, j), i < j, sorted; (m, 2) int64."""
    n = len(vectors)
    if n < 2 or k < 1:
        return np.zeros((0, 2), np.int64)
    return neighbour_pairs(knn(vectors, min(k, n - 1), approximate=approximate, params=params))


def cross_knn_pairs(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    approximate: bool | None = None,
    params: SearchParams | None = None,
) -> np.ndarray:
    """Each query row's k nearest base rows as pairs (query index, base index), sorted; (m, 2) int64."""
    if len(queries) == 0 or len(base) == 0 or k < 1:
        return np.zeros((0, 2), np.int64)
    ids = knn(base, min(k, len(base)), queries=queries, approximate=approximate, params=params)
    left = np.repeat(np.arange(len(queries), dtype=np.int64), ids.shape[1])
    return _unique_pairs(left, ids.ravel(), len(base), ordered=True)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |found row & truth row| / |truth row| (-1 entries ignored): recall of the true top-k."""
    hits, total = 0, 0
    for f, t in zip(found, truth, strict=True):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / max(total, 1)


def pair_inner_products(base: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``base[left[k]] . base[right[k]]`` for every k, float32 (m,).

    faiss reads the rows in place (``pairwise_indexed_inner_product``): at a million photos the candidate pairs
    are scored ~5x faster than by gathering both rows with numpy (docs/scale.md).
    """
    left = np.ascontiguousarray(left, dtype=np.int64)
    right = np.ascontiguousarray(right, dtype=np.int64)
    if len(left) != len(right):
        raise ValueError(f"left and right differ in length: {len(left)} and {len(right)}")
    out = np.empty(len(left), np.float32)
    if len(left) == 0:
        return out
    if min(left.min(), right.min()) < 0 or max(left.max(), right.max()) >= len(base):
        raise IndexError(f"pair indices outside 0..{len(base) - 1}")
    base = np.ascontiguousarray(base, dtype=np.float32)  # no copy for the scorers' float32 rows
    faiss.pairwise_indexed_inner_product(
        base.shape[1], len(left), faiss.swig_ptr(base), faiss.swig_ptr(left), faiss.swig_ptr(base),
        faiss.swig_ptr(right), faiss.swig_ptr(out),
    )
    return out


def neighbour_inner_products(base: np.ndarray, ids: np.ndarray, queries: np.ndarray | None = None) -> np.ndarray:
    """``queries[i] . base[ids[i, j]]`` (``queries`` None: the base rows), float32 (nq, k); -inf where ids is -1."""
    queries = base if queries is None else queries
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) != len(queries):
        raise ValueError(f"ids must have one row per query row ({len(queries)}), got {len(ids)}")
    if ids.size and ids.max() >= len(base):
        raise IndexError(f"neighbour indices outside 0..{len(base) - 1}")
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    sims = np.empty(ids.shape, np.float32)
    if ids.size:
        faiss.fvec_inner_products_by_idx(
            faiss.swig_ptr(sims), faiss.swig_ptr(queries), faiss.swig_ptr(base), faiss.swig_ptr(ids),
            base.shape[1], len(queries), ids.shape[1],
        )
    sims[ids < 0] = -np.inf
    return sims
