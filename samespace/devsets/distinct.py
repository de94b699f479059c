"""A duplicate-free collection of real photos: one photo per place, from package registries, to count false pairs.

``samespace devset build-distinct DIR`` fetches the pinned packages of ``distinct_sources.yaml`` (through
:mod:`samespace.devsets.fetching`: ``apt-get download`` + ``dpkg-deb -x`` into the cache, nothing installed) and
writes ``DIR/Test Data/<category>/<source>_<id>_1.jpg``: every photo resized to a longest side of at most 640 and
saved once (JPEG quality 92), every photo a group of its own (its own ``id``), so the project's evaluation
(``labelling.group_ids``, ``bench_prevalence``) sees a folder in which every reported pair is a false pair.
``DIR/manifest.csv`` has the columns of the real-photo set's manifest (``samespace devset verify DIR`` checks it)
and ``DIR/dropped.csv`` lists the real photos of those packages left out on purpose, with the reason.

A build refuses, naming both files, two photos with the same bytes or a near-identical perceptual hash (pHash of
the resized photo within :data:`HASH_DISTANCE` bits), a photo under 200 px on its short side once resized, and with
``exclude_like`` any photo near-identical to an image under those folders (e.g. ``data/real``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import yaml
from PIL import Image

from samespace import labelling, outputs
from samespace.devsets import builder, fetching, manifests, photo_sources, reshooting

DISTINCT_TABLES = Path(__file__).with_name("distinct_sources.yaml")
KEPT = "distinct-photos"  # the cache's folder of this collection's photos (fetching.photo_folder)
SPLIT = "Test Data"
QUALITY = builder.ORIGINAL_QUALITY
MIN_SIDE = 200  # shortest side of a written photo (longest side at most 640), in pixels
HASH_DISTANCE = 6  # pHash bits (of 64) at or under which two photos are the same picture
DROPPED = "dropped.csv"
DROPPED_FIELDS = ("package", "path", "reason")


@dataclass(frozen=True)
class Dropped:
    """A real photo of a source package left out of the collection on purpose, and why."""

    package: str
    path: str
    reason: str


def load_tables(path: Path = DISTINCT_TABLES) -> tuple[tuple[photo_sources.Source, ...], tuple[Dropped, ...]]:
    """The collection's sources and its dropped photos, checked with :func:`check_tables`."""
    sources, _ = photo_sources.load_sources(path)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=loader)
    dropped = tuple(Dropped(d["package"], d["path"], d["reason"]) for d in data.get("dropped") or ())
    check_tables(sources, dropped)
    return sources, dropped


def check_tables(sources: Sequence[photo_sources.Source], dropped: Sequence[Dropped] = ()) -> None:
    """One photo per place, no photo listed twice, none both used and dropped, no held-out package."""
    photo_sources.check_sources(sources)
    used: dict[tuple[str, str], str] = {}
    for source in sources:
        for place in source.places:
            if len(place.shots) != 1:
                raise photo_sources.RealPhotosError(
                    f"{source.name}: place {place.name!r} has {len(place.shots)} photos; one photo per place"
                )
            key = (source.package, place.shots[0])
            if key in used:
                raise photo_sources.RealPhotosError(f"{source.package}: {place.shots[0]} listed twice")
            used[key] = place.name
    for drop in dropped:
        if (drop.package, drop.path) in used:
            raise photo_sources.RealPhotosError(f"{drop.package}: {drop.path} is both used and dropped")


def photo_hash(img: Image.Image) -> imagehash.ImageHash:
    """The perceptual hash (pHash, 64 bits) that near copies share."""
    return imagehash.phash(img)


def near_copies(hashes: Sequence[imagehash.ImageHash], others: Sequence[imagehash.ImageHash] | None = None,
                max_distance: int = HASH_DISTANCE) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` of hash pairs at most ``max_distance`` bits apart: within ``hashes`` (i < j), or
    between ``hashes[i]`` and ``others[j]`` when ``others`` is given."""
    if not hashes or (others is not None and not others):
        return []
    a = np.array([h.hash.ravel() for h in hashes], dtype=np.uint8)
    b = a if others is None else np.array([h.hash.ravel() for h in others], dtype=np.uint8)
    distance = (a[:, None, :] != b[None, :, :]).sum(axis=2)
    if others is None:
        distance[np.tril_indices(len(a))] = max_distance + 1
    return [(int(i), int(j), int(distance[i, j])) for i, j in zip(*np.nonzero(distance <= max_distance), strict=True)]


@dataclass
class _Photo:
    """One photo of the collection, read and resized, with the sha256 of its source file."""

    source: photo_sources.Source
    place: photo_sources.Place
    root: Path
    image: Image.Image
    source_sha256: str

    @property
    def label(self) -> str:
        """``package:path in the package``, as errors name the photo."""
        return f"{self.source.package}:{self.place.shots[0]}"


def _read(sources: Sequence[photo_sources.Source], roots: dict[str, Path]) -> list[_Photo]:
    """Every place's photo, in the order of the sources' and the places' names; missing or small ones are errors."""
    photos = []
    for source in sorted(sources, key=lambda s: s.name):
        for place in sorted(source.places, key=lambda p: p.name):
            path = roots[source.name] / place.shots[0]
            if not path.is_file():
                raise photo_sources.RealPhotosError(f"{path}: photo of source {source.name!r} not found")
            img = reshooting.fit(reshooting.open_rgb(path), reshooting.MAX_SIDE)
            if min(img.size) < MIN_SIDE:  # small, or so elongated that it is once resized
                raise photo_sources.RealPhotosError(
                    f"{path}: {img.width}x{img.height} once resized, under {MIN_SIDE} px on its short side"
                )
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            photos.append(_Photo(source, place, roots[source.name], img, sha))
    return photos


def check_distinct(photos: Sequence[_Photo], exclude_like: Sequence[str | Path] = ()) -> None:
    """No two photos with the same bytes or pHash, and none like an image under ``exclude_like``."""
    first: dict[str, _Photo] = {}
    for photo in photos:
        other = first.setdefault(photo.source_sha256, photo)
        if other is not photo:
            raise photo_sources.RealPhotosError(f"{photo.label} and {other.label}: the same file")
    hashes = [photo_hash(p.image) for p in photos]
    for i, j, d in near_copies(hashes):
        raise photo_sources.RealPhotosError(
            f"{photos[i].label} and {photos[j].label}: the same picture (pHash {d} bits apart)"
        )
    for folder in exclude_like:
        paths = labelling.find_images(folder)
        others = [photo_hash(reshooting.open_rgb(p)) for p in paths]
        for i, j, d in near_copies(hashes, others):
            raise photo_sources.RealPhotosError(f"{photos[i].label}: the same picture as {paths[j]} (pHash {d} bits)")


def build_distinct(
    out_dir: str | Path,
    sources: Sequence[photo_sources.Source] | None = None,
    dropped: Sequence[Dropped] | None = None,
    cache_dir: str | Path = fetching.DEFAULT_CACHE,
    exclude_like: Sequence[str | Path] = (),
) -> dict[str, int]:
    """Write the collection to ``out_dir`` (``Test Data/``, ``manifest.csv``, ``dropped.csv``); returns counts.

    Photos are numbered in the order of their source's and their place's names. The folder is written to a
    staging folder and renamed, so a failed run leaves nothing; an existing one is an error.
    """
    out_dir = Path(out_dir)
    if sources is None:
        sources, dropped = load_tables()
    check_tables(sources, dropped or ())
    for path in (out_dir / SPLIT, out_dir / manifests.MANIFEST, out_dir / DROPPED):
        if path.exists():
            raise photo_sources.RealPhotosError(f"{path}: already exists; choose an empty output folder")
    roots = {source.name: fetching.fetch(source, cache_dir, KEPT) for source in sources}
    photos = _read(sources, roots)
    check_distinct(photos, exclude_like)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".{SPLIT}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    rows = []
    try:
        for number, photo in enumerate(photos):
            rows.append(_write(photo, staging, 100_000 + number))
        staging.rename(out_dir / SPLIT)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=manifests.MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["path"]))
    outputs.atomic_write(out_dir / manifests.MANIFEST, buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=DROPPED_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({"package": d.package, "path": d.path, "reason": d.reason} for d in dropped or ())
    outputs.atomic_write(out_dir / DROPPED, buffer.getvalue())
    return {"images": len(photos), "sources": len({p.source.name for p in photos}), "dropped": len(dropped or ())}


def _write(photo: _Photo, staging: Path, room_id: int) -> dict[str, str]:
    """Write one photo as ``<category>/<source>_<room_id>_1.jpg``; its manifest row."""
    buffer = io.BytesIO()
    photo.image.save(buffer, "JPEG", quality=QUALITY)  # no EXIF, no timestamp: the bytes depend on pixels only
    blob = buffer.getvalue()
    city = builder.city_name(photo.source.name)
    name = f"{city}_{room_id}_1.jpg"
    (staging / photo.place.category).mkdir(parents=True, exist_ok=True)
    (staging / photo.place.category / name).write_bytes(blob)
    shot = photo.place.shots[0]
    return {
        "split": SPLIT, "path": f"{SPLIT}/{photo.place.category}/{name}", "group": f"{city}_{room_id}",
        "shot": f"{photo.source.name}:{shot}", "source": photo.source.name, "package": photo.source.package,
        "version": photo.source.version, "original": shot, "licence": photo.source.licence_of(photo.root, shot),
        "source_sha256": photo.source_sha256, "category": photo.place.category,
        "transform": json.dumps({"jpeg_quality": QUALITY}, sort_keys=True), "sha256": hashlib.sha256(blob).hexdigest(),
    }  # fmt: skip
