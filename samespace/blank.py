"""Blank photos: images with almost no detail (black frames, lens-cap shots, blank scans, uniform colours).

Every hash and embedding of a flat image is nearly the same, so any two of them score about 1.0 (wHash and pHash
paired 2,000 uniform photos into 1,999,000 "duplicates"). find_duplicates.py therefore takes them out of the
scoring and reports them in a category of their own, ``blank``, for every method.

The rule (:func:`is_blank`): the standard deviation of the decoded 256x256 image's grey level (ITU-R BT.601 luma,
0-255) is below :data:`BLANK_STD`. Photos of rooms, even dark ones, are far above it (the generated sample set's
lowest is about 20). Byte-identical blank files are still duplicates of each other (:func:`identical_groups`,
by SHA-256 of the file content).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from samespace import hashing

BLANK_STD = 3.0  # grey-level standard deviation (0-255) below which an image counts as blank
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def grey_std(images: np.ndarray) -> np.ndarray:
    """Standard deviation of each uint8 ``(N, H, W, 3)`` image's grey level (float64, 0-255 scale)."""
    if len(images) == 0:
        return np.zeros(0, np.float64)
    grey = images.astype(np.float32) @ _LUMA
    return grey.reshape(len(images), -1).std(axis=1).astype(np.float64)


def is_blank(images: np.ndarray, threshold: float = BLANK_STD) -> np.ndarray:
    """A boolean per image: True when it has almost no detail (grey-level std below ``threshold``)."""
    return grey_std(images) < threshold


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (read in chunks: a file is never held whole in memory)."""
    with open(path, "rb") as f:
        return hashing.file_digest(f, hashlib.sha256(), chunk)


def identical_groups(paths: Sequence[str | Path]) -> list[list[int]]:
    """Indices of byte-identical files, one list per content of two or more files, in order of first appearance.

    A file that can no longer be read is left out (it was decoded a moment ago; it only matters if it vanished).
    """
    by_digest: dict[str, list[int]] = {}
    for k, path in enumerate(paths):
        try:
            by_digest.setdefault(file_digest(path), []).append(k)
        except OSError:
            continue
    return [members for members in by_digest.values() if len(members) > 1]
