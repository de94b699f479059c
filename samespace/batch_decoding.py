"""Decoding photos in batches on a pool of workers (threads or processes), each photo's content key taken from the
very bytes decoded.

Every worker runs the one decode path (:func:`decode_path` / :func:`decode_path_keyed`), so the pixels are the same
whatever the pool and its size; batches come back in path order while the next batch decodes beside the model. A
scorer's per-photo work beside the model (``scorers.PairScorer.photo_work``: the SIFT keypoints of ``verified`` and
``calibrated``) runs in the same workers, on each photo right after it decodes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samespace import (
    content_keys,
    decoding,
    machine,
)

POOLS = ("thread", "process")
DEFAULT_POOL = "thread"  # measured faster on a 2-core machine (docs/scale.md); processes pay pickling and start-up


def default_workers() -> int:
    """Decode workers by default: the cores this process may run on (its CPU affinity, e.g. a container's share)."""
    return machine.usable_cores()


def decode_path(path: Path) -> tuple[np.ndarray, float] | str:
    """The 256x256 uint8 image and its photo's aspect ratio, or the reason it cannot be read (decoding.decode_image
    turns every decoder failure into UnreadableImageError, so a file never stops the run and every reader gives
    the same reason)."""
    try:
        return decoding.decode_image(path)
    except decoding.UnreadableImageError as exc:
        message = str(exc)
        prefix = f"{path}: "
        return message[len(prefix) :] if message.startswith(prefix) else message


def decode_path_keyed(path: Path) -> tuple[np.ndarray, float, str, os.stat_result] | str:
    """:func:`decode_path` of the very bytes it hashes: also the content key of those bytes and the fstat taken before
    reading them, so a photo changed or swapped between hashing and decoding can never file one photo's
    embedding under another photo's key."""
    try:
        content, st = decoding.read_photo(path)
        image, aspect = decoding.decode_image(path, content=content)
    except decoding.UnreadableImageError as exc:
        message, prefix = str(exc), f"{path}: "
        return message[len(prefix) :] if message.startswith(prefix) else message
    return image, aspect, content_keys.content_key_of(content), st


@dataclass
class DecodedBatch:
    """One batch of decoded images: the indices (into the path list) that decoded, their aspect ratios, and the
    ones that did not decode; with ``keyed`` decoding also each decoded photo's content key and stat."""

    indices: list[int]
    images: np.ndarray
    aspects: np.ndarray
    skipped: list[tuple[int, str]]
    keys: list[str] = field(default_factory=list)
    stats: list[os.stat_result] = field(default_factory=list)
    prepared: list[Any] = field(default_factory=list)  # ``then(image, aspect)`` of each decoded photo, when given


def decode_paths(
    paths: Sequence[Path], keyed: bool, then: Callable[[np.ndarray, float], Any] | None = None
) -> list[Any]:
    """:func:`decode_path` (``keyed``: :func:`decode_path_keyed`) of each path, in order: one task of a pool. ``then``:
    run on each decoded image and aspect ratio, its result appended to the photo's tuple."""
    decode: Callable[[Path], Any] = decode_path_keyed if keyed else decode_path
    results = [decode(p) for p in paths]
    if then is None:
        return results
    return [r if isinstance(r, str) else (*r, then(r[0], r[1])) for r in results]


def make_pool(kind: str, workers: int) -> Executor:
    """A pool of ``workers`` decode threads or processes. Processes start by forkserver (spawn off Linux): a fork
    of a process running torch's thread pools can deadlock."""
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers)
    if kind == "process":
        method = "forkserver" if sys.platform.startswith("linux") else "spawn"
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))
    raise ValueError(f"decode pool {kind!r}: expected one of {', '.join(POOLS)}")


def decoded_batches(paths: Sequence[Path], batch_size: int, workers: int | None = None,
                    keyed: bool = False, pool: str = DEFAULT_POOL,
                    then: Callable[[np.ndarray, float], Any] | None = None) -> Iterator[DecodedBatch]:
    """Decode ``paths`` batch by batch in ``workers`` threads or processes (``pool``; default: one per core,
    :func:`default_workers`), the next batch while the caller uses this one.

    At most two batches of decoded images exist at a time. ``keyed``: hash the bytes decoded
    (:func:`decode_path_keyed`). ``then(image, aspect)`` runs in the workers on each decoded photo (a module-level
    function, so that processes can run it); its results are the batch's ``prepared``. A process pool gets each batch
    in one task per worker (a task per photo would cost more in messages than a small photo's decoding); a thread
    pool one task per photo.
    """
    workers = max(1, workers if workers is not None else default_workers())

    def submit(start: int) -> list[Future[list[Any]]]:
        chunk = paths[start : start + batch_size]
        step = max(1, math.ceil(len(chunk) / workers)) if pool == "process" else 1
        return [executor.submit(decode_paths, chunk[k : k + step], keyed, then) for k in range(0, len(chunk), step)]

    with make_pool(pool, workers) as executor:
        pending = submit(0)
        for start in range(0, len(paths), batch_size):
            results = [r for f in pending for r in f.result()]
            pending = submit(start + batch_size) if start + batch_size < len(paths) else []
            ok = [(start + k, r) for k, r in enumerate(results) if not isinstance(r, str)]
            bad = [(start + k, r) for k, r in enumerate(results) if isinstance(r, str)]
            images = (
                np.stack([r[0] for _, r in ok]) if ok
                else np.zeros((0, decoding.IMAGE_SIZE, decoding.IMAGE_SIZE, 3), np.uint8)
            )
            yield DecodedBatch([k for k, _ in ok], images, np.array([r[1] for _, r in ok], np.float64), bad,
                               [r[2] for _, r in ok] if keyed else [], [r[3] for _, r in ok] if keyed else [],
                               [r[-1] for _, r in ok] if then is not None else [])
