"""The Airbnb duplicate-image layout and its labels.

A split directory (``Training Data/`` or ``Test Data/``) holds room-type folders of photos named
``<city>_<room_id>_<n>.jpg``. Two photos are duplicates iff they share folder, city and room_id.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from samespace import decoding, outputs, pair_sampling

SPLITS = ("Training Data", "Test Data")
_NAME_RE = re.compile(r"^(?P<city>.+)_(?P<room_id>[^_]+)_(?P<n>\d+)$")


class DataError(ValueError):
    """A dataset directory that cannot be used, with the reason and the path."""


# --------------------------------------------------------------------------------------------
# Discover and label
# --------------------------------------------------------------------------------------------


def parse_name(filename: str) -> tuple[str, str, str] | None:
    """``boston_13693491_2 .jpg`` -> ``("boston", "13693491", "2")``; None when the name does not parse."""
    stem = Path(filename.strip()).stem.strip()
    match = _NAME_RE.match(stem)
    if match is None:
        return None
    return match["city"].strip(), match["room_id"].strip(), match["n"]


def find_images(
    root: str | Path,
    recursive: bool = True,
    extensions: Collection[str] = outputs.IMAGE_EXTENSIONS,
    unreadable: list[tuple[Path, str]] | None = None,
    hidden: list[Path] | None = None,
) -> list[Path]:
    """Image files under ``root`` (lower-case ``extensions``, matched in any case), sorted by their POSIX
    relative path. Symlinked folders are not followed; a symlink to a regular file is listed. When ``hidden`` is
    given, files and folders below ``root`` that :func:`is_hidden` are left out and appended to it.

    Sorting on the relative path as a string keeps the order (and so every pair index and every
    sampled negative) identical across platforms and file systems. Sub-folders that cannot be listed, and
    entries with an image name that are not regular files (a FIFO would block its reader, a device never
    ends), are appended to ``unreadable`` as (path, reason) when it is given: never silently left out of a count.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")

    def note(exc: OSError) -> None:
        if unreadable is not None:
            unreadable.append((Path(exc.filename or root), f"cannot list folder ({exc.strerror or exc})"))

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=note):
        if hidden is not None:
            hidden += [Path(dirpath) / n for n in sorted(dirnames) if is_hidden(n)]
            hidden += [Path(dirpath) / n for n in sorted(filenames) if is_hidden(n)]
            dirnames[:] = [n for n in dirnames if not is_hidden(n)]  # os.walk does not descend into them
            filenames = [n for n in filenames if not is_hidden(n)]
        found += [Path(dirpath) / n for n in filenames if Path(n).suffix.lower() in extensions]
        if not recursive:
            dirnames.clear()
    files = []
    for path in sorted(found, key=lambda p: p.relative_to(root).as_posix()):
        try:
            mode = path.stat().st_mode  # follows symlinks, as Path.is_file did
        except OSError:
            continue  # a dangling symlink, or removed since the listing: nothing to read
        if stat.S_ISREG(mode):
            files.append(path)
        elif unreadable is not None:
            unreadable.append((path, f"not a regular file ({decoding.file_kind(mode)})"))
    return files


# Folders of thumbnails and system files that file managers and NAS boxes write beside photos: Synology's
# thumbnails, the resource forks a Mac puts in a zip.
SYSTEM_FOLDERS = frozenset({"@eaDir", "__MACOSX"})


def is_hidden(name: str) -> bool:
    """A file or folder name a photo collection scan leaves out: hidden (``.thumbnails``, ``._IMG_1.JPG``,
    ``.Trash-1000``) or one of :data:`SYSTEM_FOLDERS`.

    >>> [is_hidden(n) for n in (".thumbnails", "._a.jpg", "@eaDir", "a.jpg", "holiday.2024")]
    [True, True, True, False, False]
    """
    return name.startswith(".") or name in SYSTEM_FOLDERS


def check_dataset_root(root: str | Path) -> None:
    """Before any decoding: ``root`` holds ``Training Data/`` and ``Test Data/``, each with duplicate pairs by name.

    Raises DataError naming the folder (one given a split folder instead of its parent says so).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    missing = [split for split in SPLITS if not (root / split).is_dir()]
    if missing:
        if root.name in SPLITS or (not any((root / s).exists() for s in SPLITS) and find_images(root)):
            raise DataError(
                f"{root}: looks like one split folder; give the folder that holds 'Training Data/' and 'Test Data/'"
            )
        raise DataError(f"{root}: missing {' and '.join(repr(m + '/') for m in missing)} (the dataset layout is "
                        "<root>/Training Data/<room type>/<city>_<room_id>_<n>.jpg and the same for Test Data)")
    for split in SPLITS:
        paths = find_images(root / split)
        if not paths:
            raise DataError(f"{root / split}: no images ({', '.join(outputs.IMAGE_EXTENSIONS)}) found")
        with warnings.catch_warnings():  # the dataset reports unparsed names when it loads the split
            warnings.simplefilter("ignore")
            groups = group_ids(paths, root / split)
        if pair_sampling.count_pairs(groups, "unique")[0] == 0:
            raise DataError(f"{root / split}: no duplicate pairs (no two images share folder, city and room_id)")


def group_ids(paths: Sequence[Path], root: str | Path) -> np.ndarray:
    """One integer per image; equal integers mean duplicates (same folder, city and room_id).

    A name that does not parse is a group of its own, reported once in a warning.
    """
    root = Path(root)
    keys: dict[tuple[str, ...], int] = {}
    ids = np.empty(len(paths), dtype=np.int64)
    unparsed: list[str] = []
    for k, path in enumerate(paths):
        rel = path.relative_to(root)
        parsed = parse_name(path.name)
        if parsed is None:
            unparsed.append(rel.as_posix())
            key: tuple[str, ...] = ("<unparsed>", rel.as_posix())
        else:
            city, room_id, _ = parsed
            key = (rel.parent.as_posix(), city.lower(), room_id)
        ids[k] = keys.setdefault(key, len(keys))
    if unparsed:
        shown = ", ".join(unparsed[:10]) + (" ..." if len(unparsed) > 10 else "")
        warnings.warn(
            f"{len(unparsed)} file name(s) in {root} do not match <city>_<room_id>_<n>.<ext>; "
            f"each is treated as a group of its own: {shown}",
            stacklevel=2,
        )
    return ids
