"""The manifest of a real-photo development set (``manifest.csv`` at the set root), read back.

It lists every written file with its source, original file, licence, the sha256 of the source photo, its
``shot`` id and the transform parameters. :func:`verify` checks a set's files against it; :func:`shot_ids` and
:func:`different_shot_pairs` give evaluation the genuinely different shots of a place.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from samespace import labelling
from samespace.devsets import photo_sources

MANIFEST = "manifest.csv"
MANIFEST_FIELDS = (
    "split", "path", "group", "shot", "source", "package", "version", "original", "licence", "source_sha256",
    "category", "transform", "sha256",
)  # fmt: skip
MANIFEST_READ_COLUMNS = ("path", "group", "shot", "sha256")  # the columns verify, shot_ids and pairs read
MAX_MANIFEST_BYTES = 16 << 20  # a manifest row is ~300 bytes: 16 MiB is ~50,000 photos, far above any set


def _file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks (a listed file may be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _shown(text: str, limit: int = 80) -> str:
    """``repr(text)`` cut to ``limit`` characters: a manifest's paths come from anyone's file."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else quoted[: limit - 3] + "..."


def read_manifest(set_dir: str | Path) -> list[dict[str, str]]:
    """Rows of ``<set_dir>/manifest.csv``.

    The file is checked as a stranger's: at most :data:`MAX_MANIFEST_BYTES`, UTF-8 CSV, with the columns the
    readers use and a value for each in every row; otherwise a RealPhotosError of one line naming the file.
    """
    path = Path(set_dir) / MANIFEST
    if not path.is_file():
        raise photo_sources.RealPhotosError(f"{path}: no manifest; build the set with `samespace devset build`")
    with path.open("rb") as f:
        blob = f.read(MAX_MANIFEST_BYTES + 1)  # read at most the cap: the file may grow after a stat
    if len(blob) > MAX_MANIFEST_BYTES:
        raise photo_sources.RealPhotosError(
            f"{path}: more than {MAX_MANIFEST_BYTES} bytes; not a manifest this tool wrote"
        )
    try:
        reader = csv.DictReader(io.StringIO(blob.decode("utf-8"), newline=""))
        rows = list(reader)
    except UnicodeDecodeError as exc:
        raise photo_sources.RealPhotosError(
            f"{path}: not a UTF-8 CSV manifest (byte {exc.start} is not UTF-8)"
        ) from None
    except csv.Error as exc:
        raise photo_sources.RealPhotosError(f"{path}: not a CSV manifest (line {reader.line_num}: {exc})") from None
    missing = [c for c in MANIFEST_READ_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise photo_sources.RealPhotosError(
            f"{path}: no {', '.join(missing)} column(s); expected the columns {', '.join(MANIFEST_FIELDS)}"
        )
    for number, row in enumerate(rows, start=2):
        if any(row[c] is None for c in MANIFEST_READ_COLUMNS):
            raise photo_sources.RealPhotosError(f"{path}: row {number} has fewer fields than the header")
    return rows


def _split_rows(split_dir: Path) -> dict[str, dict[str, str]]:
    """Manifest rows of one split, keyed by the path relative to the split folder."""
    split_dir = Path(split_dir)
    rows = read_manifest(split_dir.parent)
    prefix = f"{split_dir.name}/"
    return {r["path"][len(prefix) :]: r for r in rows if r["path"].startswith(prefix)}


def shot_ids(paths: Sequence[Path], split_dir: str | Path) -> np.ndarray:
    """One integer per image (aligned with ``paths``, e.g. ``labelling.find_images(split_dir)``): equal integers
    mean re-shoots of one photo. Two duplicates (equal ``labelling.group_ids``) with different shot ids are
    genuinely different shots. An image missing from the manifest is an error naming it."""
    split_dir = Path(split_dir)
    rows = _split_rows(split_dir)
    keys: dict[str, int] = {}
    out = np.empty(len(paths), np.int64)
    for k, path in enumerate(paths):
        rel = Path(path).relative_to(split_dir).as_posix()
        if rel not in rows:
            raise photo_sources.RealPhotosError(f"{path}: not in {split_dir.parent / MANIFEST}")
        row = rows[rel]
        out[k] = keys.setdefault(f"{row['group']}\0{row['shot']}", len(keys))
    return out


def different_shot_pairs(split_dir: str | Path) -> set[frozenset[str]]:
    """Unordered duplicate pairs of genuinely different shots, as paths relative to ``split_dir``."""
    rows = _split_rows(Path(split_dir))
    by_group: dict[str, list[str]] = {}
    for rel, row in rows.items():
        by_group.setdefault(row["group"], []).append(rel)
    pairs = set()
    for members in by_group.values():
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                if rows[a]["shot"] != rows[b]["shot"]:
                    pairs.add(frozenset((a, b)))
    return pairs


def verify(set_dir: str | Path) -> list[str]:
    """Problems of a built set against its manifest: files missing, changed (sha256) or not listed.

    An empty list means every photo is byte-for-byte the one the manifest records.
    """
    set_dir = Path(set_dir)
    rows = read_manifest(set_dir)
    problems = []
    for row in rows:
        relative = PurePosixPath(row["path"])
        if relative.is_absolute() or ".." in relative.parts or "\0" in row["path"]:
            problems.append(f"{_shown(row['path'])}: not a path inside {set_dir}")
            continue
        path = set_dir / row["path"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif _file_sha256(path) != row["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest")
    listed = {row["path"] for row in rows}
    for split in labelling.SPLITS:
        if (set_dir / split).is_dir():
            for path in labelling.find_images(set_dir / split):
                if path.relative_to(set_dir).as_posix() not in listed:
                    problems.append(f"{path}: not in the manifest")
    return problems
