"""Which files under the folders are photos: every image PIL can read (recursively), the rest reported."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageFile

from samespace import (
    errors,
    labelling,
)

# --------------------------------------------------------------------------------------------
# Finding and decoding photos
# --------------------------------------------------------------------------------------------


def readable_extensions() -> frozenset[str]:
    """File extensions of every format PIL can open and decode (its registered extensions, minus stubs).

    Stub formats (BUFR, GRIB, HDF5, WMF: identified but not decoded without extra plugins) and MPEG (only
    identified) are left out.
    """
    Image.init()
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(fmt, (None,))[0]
        if factory is None or fmt == "MPEG":
            continue
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        out.add(ext.lower())
    return frozenset(out)


# Photo formats a camera or phone writes that PIL may lack a decoder for (e.g. .heic without pillow-heif):
# such files are listed as skipped with the reason instead of being left out silently.
PHOTO_EXTENSIONS = frozenset({".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf",
                              ".rw2", ".raf", ".jp2", ".webp", ".tif", ".tiff"})


def image_files(folders: Sequence[str | Path], skipped: list[dict[str, str]] | None = None,
                include_hidden: bool = False, hidden: list[Path] | None = None) -> list[Path]:
    """Image files under each folder (recursive, symlinked folders not followed), folder by folder in the
    given order, each sorted by relative POSIX path; a file reached twice (overlapping folders) is kept once.
    Hidden files and folders and thumbnail folders below them (labelling.is_hidden: ``.thumbnails``, ``._IMG.JPG``,
    ``@eaDir``) are left out unless ``include_hidden``, and appended to ``hidden`` when it is given.

    Folders that cannot be listed and photos in a format no installed decoder reads are appended to ``skipped``
    (``{"path", "reason"}``) when it is given. Raises FindDuplicatesError naming a folder that does not exist,
    or all the folders when none holds an image.
    """
    extensions = readable_extensions()
    undecodable = PHOTO_EXTENSIONS - extensions
    seen: set[Path] = set()
    found: list[Path] = []
    empty: list[Path] = []
    for folder in folders:
        root = Path(folder)
        unreadable: list[tuple[Path, str]] = []
        try:
            files = labelling.find_images(root, extensions=extensions | undecodable, unreadable=unreadable,
                                          hidden=None if include_hidden else (hidden if hidden is not None else []))
        except labelling.DataError as exc:
            raise errors.FindDuplicatesError(str(exc)) from exc
        if skipped is not None:
            skipped.extend({"path": str(p), "reason": reason} for p, reason in unreadable)
            skipped.extend(
                {"path": str(p), "reason": f"no decoder for {p.suffix.lower()} installed (e.g. pillow-heif for .heic)"}
                for p in files if p.suffix.lower() in undecodable
            )
        files = [p for p in files if p.suffix.lower() not in undecodable]
        if not files:
            empty.append(root)
        for path in files:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    if not found:
        names = ", ".join(str(f) for f in folders)
        raise errors.FindDuplicatesError(
            f"no image files found in {names} (looked recursively for {len(extensions)} extensions PIL reads, "
            "e.g. .jpg .jpeg .png .webp .tif .bmp .gif)"
        )
    for root in empty:  # warned only beside photos found elsewhere: else the error above says it once
        warnings.warn(f"{root}: no image files", stacklevel=2)
    return found
