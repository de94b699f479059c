"""Perceptual hashes of decoded photos (wHash) and their Hamming distances."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import imagehash
import numpy as np
from PIL import Image
from tqdm import tqdm

from samespace import decoding, scoring_methods

# --------------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------------


def hash_codes(
    images: np.ndarray, hash_function: Callable[[Image.Image], imagehash.ImageHash] = imagehash.whash
) -> np.ndarray:
    """A 64-bit imagehash (8x8: whash, phash, ...) of each 256x256 uint8 image, packed into uint64."""
    codes = np.empty(len(images), dtype=np.uint64)
    for k, image in enumerate(images):
        bits = hash_function(Image.fromarray(image)).hash.ravel()
        codes[k] = np.packbits(bits).view(">u8")[0]
    return codes


def whash_codes(images: np.ndarray) -> np.ndarray:
    """64-bit wHash of each 256x256 image, packed into uint64 (the published negative-sampling hash)."""
    return hash_codes(images, imagehash.whash)


# Set bits of each byte value: the popcount where numpy has no np.bitwise_count (numpy < 2.0, e.g. the 1.24.4 of
# the default Determined image, whose torch is built against numpy 1.x; see the README).
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between packed uint64 hash codes (broadcasting, vectorised popcount)."""
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    flat = np.ascontiguousarray(x, dtype=np.uint64).reshape(-1)
    return _BYTE_POPCOUNT[flat.view(np.uint8)].reshape(-1, 8).sum(axis=1).reshape(np.shape(x))


def stream_hashes(paths: Sequence[Path], progress: bool = True) -> tuple[np.ndarray, list[int], list[str]]:
    """wHash codes of photos decoded one at a time (pixels dropped): (codes, indices of kept paths, skipped)."""
    codes: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[str] = []
    for k, path in enumerate(tqdm(paths, desc="hash images", unit="img", disable=not progress)):
        try:
            codes.append(whash_codes(decoding.load_image(path)[None]))
            kept.append(k)
        except decoding.UnreadableImageError as exc:
            warnings.warn(f"skipped {exc}", stacklevel=3)
            skipped.append(str(exc))
    return (np.concatenate(codes) if codes else np.zeros(0, np.uint64)), kept, skipped


def phash_codes(images: np.ndarray) -> np.ndarray:
    """64-bit pHash (imagehash, 8x8 DCT) of each 256x256 uint8 image, packed into uint64 like hashing.whash_codes."""
    return hash_codes(images, imagehash.phash)


HASH_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"whash": whash_codes, "phash": phash_codes}


def hash_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - hamming / 64`` between packed uint64 codes (broadcasting); 1.0 means identical hashes."""
    return 1.0 - hamming(a, b) / scoring_methods.HASH_BITS


def file_digest(f: BinaryIO, digest: hashlib._Hash, chunk: int = 1 << 20) -> str:
    """``digest`` fed the rest of a binary file, ``chunk`` bytes at a time (never the whole file in memory), as
    hex: the project's one file-hashing loop (hashlib.file_digest, which needs Python 3.11)."""
    while block := f.read(chunk):
        digest.update(block)
    return digest.hexdigest()
