"""Reading Qt resource bundles (``.rcc``): GCompris keeps the photos of its activities inside them."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from samespace.devsets import photo_sources


def read_bundle(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file in a Qt resource bundle (``rcc`` format 1-3, zlib or uncompressed)."""
    blob = path.read_bytes()
    if blob[:4] != b"qres":
        raise photo_sources.RealPhotosError(f"{path}: not a Qt resource file")
    version, tree, payload, names = struct.unpack(">IIII", blob[4:20])
    entry_size = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        at = tree + index * entry_size
        name_offset, flags = struct.unpack(">IH", blob[at : at + 6])
        name = name_at(name_offset) if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            stack += [(first + k, f"{prefix}{name}/") for k in range(count)]
            continue
        (offset,) = struct.unpack(">I", blob[at + 10 : at + 14])
        (size,) = struct.unpack(">I", blob[payload + offset : payload + offset + 4])
        raw = blob[payload + offset + 4 : payload + offset + 4 + size]
        if flags & 4:  # zstd (format 3): no photo of ours is stored so
            continue
        yield prefix + name, zlib.decompress(raw[4:]) if flags & 1 else raw
