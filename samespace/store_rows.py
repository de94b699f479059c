"""The rows of an embedding store: blocks as they came, some memory-mapped from store files, some in memory.

A store reads its base and segments (``store_format.read_contents``: large fields memory-mapped once checked) and
adds the rows a run embeds. Joining them into one array would copy every row into memory: 68 GB for a million
photos' keypoints. :class:`RowBlocks` keeps each file's arrays as a block of its own and the rows added in memory as
one more; a row is found by its number, and gathering rows copies only the rows asked for.

>>> import numpy as np
>>> blocks = RowBlocks()
>>> blocks.adopt({"v": np.array([[1.0], [2.0]])}), blocks.append({"v": np.array([[3.0]])})
(0, 2)
>>> blocks.take("v", np.array([2, 0]), np.dtype("float64"), (1,)).ravel().tolist(), len(blocks)
([3.0, 1.0], 3)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class RowBlocks:
    """Rows 0..n-1 of named fields, in blocks: :meth:`adopt` keeps arrays as they are (memory-mapped ones stay
    mapped), :meth:`append` adds rows in memory, joined with the rows appended just before them when first read."""

    def __init__(self) -> None:
        self._blocks: list[dict[str, np.ndarray]] = []
        self._starts: list[int] = []
        self._pending: list[dict[str, np.ndarray]] = []  # appended rows not joined yet (the last block to come)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def adopt(self, arrays: Mapping[str, np.ndarray]) -> int:
        """Add arrays of equal length as a block without copying them; returns the number of their first row."""
        self._join()
        return self._push(dict(arrays))

    def append(self, rows: Mapping[str, np.ndarray]) -> int:
        """Add rows held in memory; returns the number of the first."""
        start = self._n
        self._pending.append(dict(rows))
        self._n += len(next(iter(rows.values())))
        return start

    def blocks(self) -> list[dict[str, np.ndarray]]:
        """The blocks in row order (to :meth:`adopt` them elsewhere)."""
        self._join()
        return list(self._blocks)

    def in_memory(self) -> int:
        """Rows held in memory (not memory-mapped)."""
        held = sum(len(next(iter(b.values()))) for b in self._pending)
        return held + sum(len(next(iter(b.values()))) for b in self._blocks
                          if not any(isinstance(a, np.memmap) for a in b.values()))

    def take(self, name: str, rows: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """Field ``name`` of rows ``rows``, in that order, as a new array of ``dtype`` and row ``shape``."""
        self._join()
        if not len(rows):
            return np.zeros((0, *shape), dtype)
        which = np.searchsorted(np.array(self._starts, np.int64), rows, side="right") - 1
        if which.min() == which.max():  # all in one block: one copy of the rows asked for, not two
            block = int(which[0])
            return np.take(self._blocks[block][name], rows - self._starts[block], axis=0).astype(dtype, copy=False)
        out = np.empty((len(rows), *shape), dtype)
        for block in np.unique(which):
            mask = which == block
            out[mask] = self._blocks[block][name][rows[mask] - self._starts[block]]
        return out

    def _push(self, block: dict[str, np.ndarray]) -> int:
        start = self._n
        self._starts.append(start)
        self._blocks.append(block)
        self._n += len(next(iter(block.values())))
        return start

    def _join(self) -> None:
        """Make the appended rows one block (they are always the last rows: :meth:`adopt` joins them first)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._n -= sum(len(next(iter(b.values()))) for b in pending)  # counted again by _push
        self._push({name: np.concatenate([b[name] for b in pending]) if len(pending) > 1 else pending[0][name]
                    for name in pending[0]})
