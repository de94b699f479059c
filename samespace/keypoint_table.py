"""Every photo's keypoints of a run, in memory up to a budget and beyond it in a scratch file.

The ``verified`` and ``calibrated`` scorers keep each photo's SIFT keypoints (68 KB packed) until the pairs are
scored: 68 GB for a million photos, more than most machines' memory. A :class:`KeypointTable` holds them packed,
one fixed-size record a photo (``verification.pack``'s layout); past ``in_memory`` photos it moves them to an
anonymous scratch file (``tempfile.TemporaryFile``: unlinked at once, so a killed run leaves nothing behind) that is
memory-mapped for reading. The page cache then holds what fits and the kernel evicts the rest, instead of the run
running out of memory. Verification reads two records a pair; a run's pairs are mostly each photo's nearest
neighbours, so reads stay local enough for the cache.

>>> import numpy as np
>>> from samespace import verification
>>> table = KeypointTable(max_keypoints=4, in_memory=1)
>>> one = verification.LocalFeatures(np.ones((2, 2), np.float32), np.full((2, 128), 7, np.uint8))
>>> table.append(verification.pack([one, one], max_keypoints=4))
>>> len(table), table.spilled, table[1].xy.shape, int(table[1].descriptors[0, 0])
(2, True, (2, 2), 7)
"""

from __future__ import annotations

import bisect
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import IO, overload

import numpy as np

from samespace import machine, verification

# Photos whose keypoints stay in memory when the machine does not say its size (1.4 GB at 68 KB a photo)
FALLBACK_IN_MEMORY = 20_000
MEMORY_SHARE = 1 / 8  # of the machine's RAM, for keypoints held in memory; the rest go to the scratch file


def record_dtype(max_keypoints: int = verification.MAX_KEYPOINTS) -> np.dtype:
    """One photo's packed keypoints: count, positions and descriptors (68,004 bytes for 500 keypoints)."""
    return np.dtype([("count", "<i4"), ("xy", "<f4", (max_keypoints, 2)),
                     ("descriptors", "u1", (max_keypoints, 128))])


def default_in_memory(max_keypoints: int = verification.MAX_KEYPOINTS) -> int:
    """Photos kept in memory by default: :data:`MEMORY_SHARE` of the machine's RAM (3 GB, 44,000 photos on 24 GB)."""
    total = machine.physical_memory()
    if not total:
        return FALLBACK_IN_MEMORY
    return max(1, int(total * MEMORY_SHARE) // record_dtype(max_keypoints).itemsize)


def scratch_folder() -> str:
    """Where the scratch file goes: the temporary folder (``TMPDIR`` sets it)."""
    return tempfile.gettempdir()


def scratch_space() -> tuple[str, int]:
    """The scratch folder and its free bytes."""
    folder = scratch_folder()
    return folder, shutil.disk_usage(folder).free


def room_problem(method: str, n_photos: int, new_store_rows: int = 0) -> str | None:
    """Why a run's keypoints cannot be held, or None. The scorer's, of ``n_photos`` photos, go to the scratch file
    past :func:`default_in_memory`, which must fit in its folder's free space. An embedding store keeps the rows it
    has not saved yet (``new_store_rows``) in memory, and a save builds a segment of them in memory once more: they
    must fit in half of the machine's memory (the rows it read are memory-mapped: store_format.MAP_FROM)."""
    record = record_dtype().itemsize
    total = machine.physical_memory()
    need = 2 * new_store_rows * record
    if total and need > total // 2:
        return (f"{method} holds about {record // 1000} KB of keypoints per photo new to the embedding store in "
                f"memory until the store is saved, twice while saving: {new_store_rows:,} new photos need about "
                f"{need / 1e9:.1f} GB, more than half of this machine's {total / 1e9:.1f} GB. Run on part of the "
                "collection at a time (each run adds its photos to the store), or add --no-cache")
    spilled = max(0, n_photos - default_in_memory()) * record
    if spilled:
        folder, free = scratch_space()
        if spilled > free:
            return (f"{method} keeps about {record // 1000} KB of keypoints per photo: {n_photos:,} photos need a "
                    f"scratch file of about {spilled / 1e9:.1f} GB in {folder}, which has {free / 1e9:.1f} GB free. "
                    "Set TMPDIR to a folder with more space, or split the collection")
    return None


class KeypointTable(Sequence[verification.LocalFeatures]):
    """Packed keypoints of photos 0..n-1, appended in photo order; ``table[i]`` unpacks photo ``i``'s.

    ``in_memory``: photos held in memory before every record moves to the scratch file in ``folder`` (default
    :func:`default_in_memory` and :func:`scratch_folder`). Writing to the scratch file raises OSError (a full disk)
    naming the folder.
    """

    def __init__(self, max_keypoints: int = verification.MAX_KEYPOINTS, in_memory: int | None = None,
                 folder: str | None = None) -> None:
        self.dtype = record_dtype(max_keypoints)
        self.max_keypoints = max_keypoints
        self.in_memory = default_in_memory(max_keypoints) if in_memory is None else in_memory
        self.folder = folder
        self._chunks: list[np.ndarray] = []  # in memory: the records as appended (never joined: that would copy them)
        self._starts: list[int] = []  # the first photo of each chunk
        self._mapped: np.ndarray | None = None  # in the scratch file: the file mapped, once read
        self._file: IO[bytes] | None = None
        self._n = 0
        self._mapping = threading.Lock()

    @property
    def spilled(self) -> bool:
        """Whether the records are in the scratch file."""
        return self._file is not None

    def __len__(self) -> int:
        return self._n

    def append(self, fields: Mapping[str, np.ndarray]) -> None:
        """Add photos' packed keypoints (``keypoint_count``, ``keypoint_xy``, ``keypoint_descriptors``: what
        ``verification.pack`` and the embedding store give)."""
        count = np.asarray(fields["keypoint_count"])
        if not len(count):
            return
        records = np.zeros(len(count), self.dtype)
        records["count"] = count
        records["xy"] = fields["keypoint_xy"]
        records["descriptors"] = fields["keypoint_descriptors"]
        self._mapped = None
        if self._file is None and self._n + len(records) > self.in_memory:
            self._spill()
        if self._file is not None:
            self._write(records)
        else:
            self._starts.append(self._n)
            self._chunks.append(records)
        self._n += len(records)

    def extend(self, features: Sequence[verification.LocalFeatures]) -> None:
        """Add photos' keypoints as found (``verification.local_features``)."""
        self.append(verification.pack(features, self.max_keypoints))

    def _spill(self) -> None:
        folder = self.folder or scratch_folder()
        try:
            self._file = tempfile.TemporaryFile(prefix="samespace-keypoints-", dir=folder)
        except OSError as exc:
            raise OSError(f"{folder}: cannot create the keypoints' scratch file "
                          f"({type(exc).__name__}: {exc.strerror or exc}); set TMPDIR to another folder") from exc
        for chunk in self._chunks:
            self._write(chunk)
        self._chunks, self._starts = [], []

    def _write(self, records: np.ndarray) -> None:
        assert self._file is not None
        try:
            self._file.seek(0, os.SEEK_END)
            self._file.write(records.tobytes())
            self._file.flush()
        except OSError as exc:
            raise OSError(f"{self.folder or scratch_folder()}: cannot write the keypoints' scratch file "
                          f"({type(exc).__name__}: {exc.strerror or exc}); free some space or set TMPDIR "
                          "to another folder") from exc

    def _record(self, i: int) -> np.void:
        if self._file is None:
            chunk = bisect.bisect_right(self._starts, i) - 1
            return self._chunks[chunk][i - self._starts[chunk]]
        mapped = self._mapped
        if mapped is None:
            with self._mapping:  # verification reads from several threads (verification.match_pairs)
                if self._mapped is None:
                    self._mapped = np.memmap(self._file, self.dtype, mode="r", shape=(self._n,))
                mapped = self._mapped
        return mapped[i]

    @overload
    def __getitem__(self, index: int) -> verification.LocalFeatures: ...

    @overload
    def __getitem__(self, index: slice) -> list[verification.LocalFeatures]: ...

    def __getitem__(self, index: int | slice) -> verification.LocalFeatures | list[verification.LocalFeatures]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        i = int(index)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"photo {index} of {self._n}")
        record = self._record(i)
        m = int(record["count"])
        return verification.LocalFeatures(np.array(record["xy"][:m]), np.array(record["descriptors"][:m]))
