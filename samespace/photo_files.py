"""Which files under the folders are photos: every image PIL can read (recursively), the rest reported; each file
once, however many links reach it; with ``--against``, which side each photo is on."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageFile

from samespace import (
    errors,
    image_formats,
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
    image_formats.enable_heif()
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


# Photo formats a camera or phone writes that PIL may lack a decoder for (.heic without pillow-heif, camera raw):
# such files are listed as skipped with the reason instead of being left out silently.
PHOTO_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf",
                              ".rw2", ".raf", ".jp2", ".webp", ".tif", ".tiff"})


def no_decoder_reason(suffix: str) -> str:
    """Why a photo of a format this installation cannot decode is skipped, and for HEIF what installs its decoder.

    >>> no_decoder_reason(".CR2")
    'no decoder for .cr2 installed'
    """
    suffix = suffix.lower()
    if suffix in image_formats.HEIF_EXTENSIONS:
        return f"no decoder for {suffix} installed ({image_formats.HEIF_EXTRA})"
    return f"no decoder for {suffix} installed"


def image_files(folders: Sequence[str | Path], skipped: list[dict[str, str]] | None = None,
                include_hidden: bool = False, hidden: list[Path] | None = None) -> list[Path]:
    """Image files under each folder (recursive, symlinked folders not followed), folder by folder in the
    given order, each sorted by relative POSIX path; a file reached twice (overlapping folders, a symbolic or a
    hard link: :func:`file_identity`) is kept once, at the first path reaching it.
    Hidden files and folders and thumbnail folders below them (labelling.is_hidden: ``.thumbnails``, ``._IMG.JPG``,
    ``@eaDir``) are left out unless ``include_hidden``, and appended to ``hidden`` when it is given.

    Folders that cannot be listed and photos in a format no installed decoder reads are appended to ``skipped``
    (``{"path", "reason"}``) when it is given. Raises FindDuplicatesError naming a folder that does not exist,
    or all the folders when none holds an image.
    """
    extensions = readable_extensions()
    undecodable = PHOTO_EXTENSIONS - extensions
    seen: set[object] = set()
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
                {"path": str(p), "reason": no_decoder_reason(p.suffix)}
                for p in files if p.suffix.lower() in undecodable
            )
        files = [p for p in files if p.suffix.lower() not in undecodable]
        if not files:
            empty.append(root)
        for path in files:
            key = file_identity(path)
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


def file_identity(path: Path) -> object:
    """What makes two paths one file: its device and inode, so that symbolic and hard links to a photo are that
    photo (as fclones and czkawka count them), not a duplicate of it; after ``act --hardlink`` a re-run finds those
    duplicates gone. A path that cannot be stat'ed, or whose file system gives no inode numbers (0), is its
    resolved self: never two photos taken for one.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "a.jpg").write_bytes(b"x")
    1
    >>> (folder / "b.jpg").hardlink_to(folder / "a.jpg")
    >>> file_identity(folder / "a.jpg") == file_identity(folder / "b.jpg")
    True
    """
    try:
        info = os.stat(path)
    except OSError:
        return path.resolve()
    return (info.st_dev, info.st_ino) if info.st_ino else path.resolve()


def _real_parent(path: Path) -> Path:
    """``path`` with its folders' symbolic links resolved (not the file's own: a linked photo stays put)."""
    return Path(os.path.realpath(path.parent)) / path.name


def split_sides(
    new_folders: Sequence[str | Path], library_folders: Sequence[str | Path], skipped: list[dict[str, str]],
    include_hidden: bool = False, hidden: list[Path] | None = None,
) -> tuple[list[Path], list[Path]]:
    """The photos of the new folders and of the library folders, each photo on one side only.

    Folders may overlap (a library inside the photos folder, or the reverse): a photo under both counts on the
    side of the folder nearest to it, and one warning per overlapping pair of folders says how many photos went
    where. A link on one side to a photo of the other (:func:`file_identity`) is that photo: it counts once, as a
    library photo, with one warning per new folder. The same folder on both sides is a FindDuplicatesError.
    """
    new = [Path(os.path.realpath(f)) for f in new_folders]
    library = [Path(os.path.realpath(f)) for f in library_folders]
    for folder, real in zip(library_folders, library, strict=True):
        if real in new:
            raise errors.FindDuplicatesError(f"{folder} is given both as PHOTOS_DIR and with --against; give it once")
    new_paths = image_files(new_folders, skipped, include_hidden, hidden)
    library_paths = image_files(library_folders, skipped, include_hidden, hidden)

    def nearest(real: Path) -> tuple[str, Path]:
        holders = [(len(f.parts), side, f) for side, folders in (("new", new), ("library", library))
                   for f in folders if real.is_relative_to(f)]
        _, side, folder = max(holders)
        return side, folder

    on_both = {_real_parent(p) for p in new_paths} & {_real_parent(p) for p in library_paths}
    side_of = {real: nearest(real) for real in on_both}
    for (side, folder), count in sorted(Counter(side_of.values()).items()):
        other = "PHOTOS_DIR" if side == "library" else "--against"
        warnings.warn(f"{count:,} photos under {folder} are also under a {other} folder; they count as {side} "
                      "photos (the nearer folder decides)", stacklevel=2)

    def keep(paths: list[Path], side: str) -> list[Path]:
        return [p for p in paths if side_of.get(_real_parent(p), (side,))[0] == side]

    new_paths, library_paths = keep(new_paths, "new"), keep(library_paths, "library")
    in_library = {file_identity(p) for p in library_paths}
    linked = [p for p in new_paths if file_identity(p) in in_library]
    for folder, count in Counter(next(str(f) for f in new_folders if p.is_relative_to(f)) for p in linked).items():
        warnings.warn(f"{count:,} photos under {folder} are links to --against photos; they count once, as library "
                      "photos", stacklevel=2)
    left_out = set(linked)
    return [p for p in new_paths if p not in left_out], library_paths
