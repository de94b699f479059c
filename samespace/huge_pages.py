"""Transparent huge pages for faiss's graph buffers (Linux), so a million-node graph walk misses the TLB less.

An HNSW build or walk reads rows and link lists at random addresses. With 4 KiB pages a graph of 250,000 nodes
(~110 MB) or 1,000,000 (~450 MB) needs far more page-table entries than the TLB holds, and each miss costs a
page walk. 2 MiB pages cut those misses (README "Large collections", session 8): at 1,000,000 the build -9% and
the walk -14%; end to end ~10% faster at 250,000 and at 1,000,000 alike, so how the cost grows with N is
unchanged.

Where the system leaves huge pages to ``madvise`` (the common default), only memory advised with
``MADV_HUGEPAGE`` before it is first touched gets them. numpy advises its own large arrays; faiss's
``std::vector`` buffers are not advised. :func:`reserve_on_huge_pages` therefore sizes such a vector once,
advises its buffer, drops the pages it touched (``MADV_DONTNEED``: they come back zero-filled, now as huge
pages) and empties the vector: ``std::vector`` keeps its capacity, so the graph later fills the same buffer.
Anywhere else (another OS, THP ``never``, a refused call) it does nothing, and the search is the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

HUGE_PAGE = 2 << 20  # x86-64 and arm64 (4 KiB base pages) transparent huge page size
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def available() -> bool:
    """Whether this system gives transparent huge pages to advised memory (Linux, THP ``always`` or ``madvise``)."""
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def aligned_range(address: int, nbytes: int) -> tuple[int, int]:
    """The whole huge pages inside [address, address + nbytes): (start, end), start == end when there is none."""
    start = (address + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    end = (address + nbytes) // HUGE_PAGE * HUGE_PAGE
    return start, max(start, end)


def reserve_on_huge_pages(vector: Any, size: int, item_bytes: int) -> bool:
    """Give a faiss vector (``resize``/``size``/``data`` SWIG wrapper) a ``size``-item buffer on huge pages.

    The vector keeps its length and items (faiss's offsets start as [0]); only whole huge pages of the buffer
    past them are advised, so neither its items nor the allocator's bookkeeping around it are touched.
    Returns whether the buffer was advised.
    """
    libc = _libc()
    length = vector.size()
    if libc is None or not available() or size <= length:
        return False
    vector.resize(size)
    address = int(vector.data())
    start, end = aligned_range(address + length * item_bytes, (size - length) * item_bytes)
    advised = end > start
    for advice in (MADV_HUGEPAGE, MADV_DONTNEED):  # advise first: the pages dropped come back huge
        if advised and libc.madvise(start, end - start, advice) != 0:
            advised = False
    vector.resize(length)  # std::vector keeps its capacity: the graph fills this buffer
    return advised


def reserve_hnsw(index: Any, n: int) -> bool:
    """Reserve an empty faiss HNSW index's rows, link lists and node offsets for ``n`` nodes on huge pages.

    faiss draws each node's level with P(level >= l) = M^-l; a node at level L has 2M + L*M link slots, so the
    links need n * (2M + M/(M-1)) slots on average: 2M + 2 per node leaves a margin many standard deviations
    wide. Were it exceeded, the vector would grow elsewhere as usual (correct, without huge pages). Returns
    whether the rows and the links were advised.
    """
    import faiss

    if index.ntotal != 0:
        raise ValueError("reserve_hnsw needs an empty index")
    storage = faiss.downcast_index(index.storage)
    hnsw = index.hnsw
    m = hnsw.nb_neighbors(1)
    reserve_on_huge_pages(hnsw.offsets, n + 1, 8)  # 8 bytes a node: smaller graphs have no whole page of it
    rows = reserve_on_huge_pages(storage.codes, n * storage.code_size, 1)
    links = reserve_on_huge_pages(hnsw.neighbors, n * (2 * m + 2), 4)
    return rows and links
