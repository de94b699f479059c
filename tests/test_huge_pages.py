"""huge_pages: faiss's graph buffers reserved on transparent huge pages, same graph, same neighbours."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from samespace import huge_pages, neighbours


def _vma_flags(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the memory mapping that holds ``address``."""
    fields: dict[str, str] = {}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(x, 16) for x in head.split("-"))
                inside = low <= address < high
            elif inside:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
    return fields


def test_aligned_range_keeps_only_whole_huge_pages_inside() -> None:
    page = huge_pages.HUGE_PAGE
    assert huge_pages.aligned_range(page + 16, 3 * page) == (2 * page, 4 * page)
    assert huge_pages.aligned_range(2 * page, 2 * page) == (2 * page, 4 * page)
    assert huge_pages.aligned_range(page + 16, page) == (2 * page, 2 * page)  # no whole page inside: empty


def test_reserve_keeps_the_items_and_the_buffer() -> None:
    offsets = faiss.UInt64Vector()
    offsets.push_back(0)  # an HNSW's offsets start as [0]
    size = 3 * huge_pages.HUGE_PAGE // 8
    advised = huge_pages.reserve_on_huge_pages(offsets, size, 8)
    assert offsets.size() == 1 and offsets.at(0) == 0
    address = int(offsets.data())
    offsets.resize(size)  # within the reserved capacity: the buffer does not move
    assert int(offsets.data()) == address
    assert advised == huge_pages.available()
    if advised:
        start, _ = huge_pages.aligned_range(address + 8, (size - 1) * 8)
        assert _vma_flags(start).get("THPeligible") == "1"


def test_graph_on_huge_pages_finds_the_same_neighbours() -> None:
    rng = np.random.default_rng(0)
    # 40,000 rows: 5.1 MB of codes, 5.4 MB of links; a buffer under 4 MiB may hold no whole 2 MiB page
    x = rng.standard_normal((40_000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # faiss's parallel build is not deterministic
    try:
        results = []
        for reserve in (False, True):
            index = faiss.IndexHNSWSQ(64, faiss.ScalarQuantizer.QT_fp16, 16, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 40
            codes = faiss.downcast_index(index.storage).codes
            if reserve:
                advised = huge_pages.reserve_hnsw(index, len(x))
                buffers = int(codes.data()), int(index.hnsw.neighbors.data())  # empty, with capacity
            for start in range(0, len(x), 2048):
                index.add(x[start : start + 2048])
            if reserve:
                assert advised == huge_pages.available()
                # the graph filled the reserved buffers: no reallocation moved it off them
                assert (int(codes.data()), int(index.hnsw.neighbors.data())) == buffers
            index.hnsw.efSearch = 64
            results.append(index.search(x[:500], 10)[1])
    finally:
        faiss.omp_set_num_threads(threads)
    np.testing.assert_array_equal(results[0], results[1])
    assert np.mean(results[1][:, 0] == np.arange(500)) > 0.99  # each row finds itself


def test_reserve_refuses_a_filled_index() -> None:
    index = faiss.IndexHNSWFlat(8, 4)
    index.add(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="empty index"):
        huge_pages.reserve_hnsw(index, 10)


def test_build_graph_uses_it() -> None:
    """neighbours.build_graph reserves (on a system with THP the rows' buffer is advised)."""
    x = np.random.default_rng(1).standard_normal((20_000, 128)).astype(np.float32)
    params = neighbours.SearchParams(pca_dim=128, hnsw_m=8, ef_construction=16, float16=True)
    index = neighbours.build_graph(x, None, params)
    codes = faiss.downcast_index(index.storage).codes
    assert index.ntotal == len(x)
    if huge_pages.available():
        start, end = huge_pages.aligned_range(int(codes.data()), codes.size())
        assert end > start and _vma_flags(start).get("THPeligible") == "1"
