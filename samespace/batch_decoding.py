"""Decoding photos in batches on worker threads, each photo's content key taken from the very bytes decoded."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samespace import (
    content_keys,
    decoding,
)


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


def decoded_batches(paths: Sequence[Path], batch_size: int, workers: int = 2,
                    keyed: bool = False) -> Iterator[DecodedBatch]:
    """Decode ``paths`` batch by batch in ``workers`` threads, the next batch while the caller uses this one.

    At most two batches of decoded images exist at a time. ``keyed``: hash the bytes decoded
    (:func:`decode_path_keyed`).
    """
    decode: Callable[[Path], Any] = decode_path_keyed if keyed else decode_path

    def submit(start: int) -> list[Future[Any]]:
        return [pool.submit(decode, p) for p in paths[start : start + batch_size]]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = submit(0)
        for start in range(0, len(paths), batch_size):
            results = [f.result() for f in pending]
            pending = submit(start + batch_size) if start + batch_size < len(paths) else []
            ok = [(start + k, r) for k, r in enumerate(results) if not isinstance(r, str)]
            bad = [(start + k, r) for k, r in enumerate(results) if isinstance(r, str)]
            images = (
                np.stack([r[0] for _, r in ok]) if ok
                else np.zeros((0, decoding.IMAGE_SIZE, decoding.IMAGE_SIZE, 3), np.uint8)
            )
            yield DecodedBatch([k for k, _ in ok], images, np.array([r[1] for _, r in ok], np.float64), bad,
                               [r[2] for _, r in ok] if keyed else [], [r[3] for _, r in ok] if keyed else [])
