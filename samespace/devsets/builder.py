"""Writing the real-photo development set: every source's places as photos in the Airbnb layout, and its manifest.

``Training Data/`` and ``Test Data/`` get room-type folders and ``<city>_<id>_<n>.jpg`` names, where ``city`` is
the source and ``id`` one place. A place is a singleton or a group of 2-4: its different shots first (as
photographed), then re-shoots of them (:func:`samespace.devsets.reshooting.reshoot`). The same seed and the same
source photos give the same bytes; each place's randomness is keyed by its source's and its own name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from samespace import labelling, outputs
from samespace.devsets import fetching, manifests, photo_sources, reshooting

ORIGINAL_QUALITY = 92  # a group's first photo and singletons: resized only, saved at this quality
GROUP_SIZE = (2, 4)
SINGLETON_RATE = 0.3  # share of single-shot places written as one photo without duplicates


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def city_name(source_name: str) -> str:
    """A source name as the ``city`` part of a file name: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", Path(source_name).name.lower()).strip("-") or "source"


def _place_rng(seed: int, source: str, place: str) -> np.random.Generator:
    # Keyed by names, not positions: adding a source or a place leaves every other place's photos unchanged.
    key = int.from_bytes(hashlib.sha256(f"{source}\0{place}".encode()).digest()[:8], "big")
    return np.random.default_rng([seed, key])


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)  # no EXIF, no timestamp: the bytes depend on pixels only
    return buffer.getvalue()


def build(
    out_dir: str | Path,
    seed: int = 0,
    sources: Sequence[photo_sources.Source] | None = None,
    cache_dir: str | Path = fetching.DEFAULT_CACHE,
) -> dict[str, dict[str, int]]:
    """Write the real-photo set to ``out_dir`` (``Training Data/``, ``Test Data/``, ``manifest.csv``).

    Returns per split: images, groups, singletons, places and different-shot pairs. The splits are written
    to staging folders and renamed, so a failed run leaves nothing; an existing split is an error.
    """
    out_dir = Path(out_dir)
    sources = list(photo_sources.SOURCES if sources is None else sources)
    photo_sources.check_sources(sources)
    for split in labelling.SPLITS:
        if (out_dir / split).exists():
            raise photo_sources.RealPhotosError(f"{out_dir / split}: already exists; choose an empty output folder")
    if (out_dir / manifests.MANIFEST).exists():
        raise photo_sources.RealPhotosError(
            f"{out_dir / manifests.MANIFEST}: already exists; choose an empty output folder"
        )
    roots = {source.name: fetching.fetch(source, cache_dir) for source in sources}
    for source in sources:  # every listed photo must be there before anything is written
        for place in source.places:
            for shot in place.shots:
                if not (roots[source.name] / shot).is_file():
                    raise photo_sources.RealPhotosError(
                        f"{roots[source.name] / shot}: photo of source {source.name!r} not found"
                    )
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    summary: dict[str, dict[str, int]] = {}
    staged: list[tuple[Path, Path]] = []
    try:
        for split in labelling.SPLITS:
            staging = out_dir / f".{split}.partial"
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir()
            staged.append((staging, out_dir / split))
            split_sources = sorted((s for s in sources if s.split == split), key=lambda s: s.name)
            places = [(s, p) for s in split_sources for p in sorted(s.places, key=lambda p: p.name)]
            counts = {"images": 0, "groups": 0, "singletons": 0, "places": len(places), "different_shot_pairs": 0}
            for number, (source, place) in enumerate(places):
                written = _write_place(source, place, roots[source.name], staging, split, 100_000 + number, seed)
                rows += written
                shots = [r["shot"] for r in written]
                counts["images"] += len(written)
                counts["groups" if len(written) > 1 else "singletons"] += 1
                counts["different_shot_pairs"] += sum(
                    shots[i] != shots[j] for i in range(len(shots)) for j in range(i + 1, len(shots))
                )
            summary[split] = counts
        for staging, target in staged:
            staging.rename(target)
        staged.clear()
        _write_manifest(out_dir / manifests.MANIFEST, rows)
    finally:
        for staging, _ in staged:
            shutil.rmtree(staging, ignore_errors=True)
    return summary


def _write_place(
    source: photo_sources.Source,
    place: photo_sources.Place,
    root: Path,
    staging: Path,
    split: str,
    room_id: int,
    seed: int,
) -> list[dict[str, str]]:
    """Write one place's photos: a singleton, or a group of 2-4 (different shots first, then re-shoots)."""
    rng = _place_rng(seed, source.name, place.name)
    size = int(rng.integers(GROUP_SIZE[0], GROUP_SIZE[1] + 1))
    if len(place.shots) == 1 and rng.random() < SINGLETON_RATE:
        size = 1
    n_shots = min(len(place.shots), size)
    chosen = sorted(rng.choice(len(place.shots), size=n_shots, replace=False).tolist())
    plan = [(place.shots[k], False) for k in chosen]  # each different shot once, as photographed
    plan += [(place.shots[chosen[int(rng.integers(n_shots))]], True) for _ in range(size - n_shots)]
    folder = staging / place.category
    folder.mkdir(parents=True, exist_ok=True)
    city = city_name(source.name)
    originals: dict[str, tuple[Image.Image, str]] = {}
    rows = []
    for n, (shot, transformed) in enumerate(plan, start=1):
        if shot not in originals:
            blob = (root / shot).read_bytes()
            originals[shot] = (reshooting.fit(reshooting.open_rgb(root / shot), reshooting.MAX_SIDE), _sha256(blob))
        photo, source_sha = originals[shot]
        if transformed:
            photo, quality, params = reshooting.reshoot(photo, rng)
        else:
            quality, params = ORIGINAL_QUALITY, {"jpeg_quality": ORIGINAL_QUALITY}
        blob = _jpeg(photo, quality)
        name = f"{city}_{room_id}_{n}.jpg"
        (folder / name).write_bytes(blob)
        rows.append({
            "split": split, "path": f"{split}/{place.category}/{name}", "group": f"{city}_{room_id}",
            "shot": f"{source.name}:{shot}", "source": source.name, "package": source.package,
            "version": source.version, "original": shot, "licence": source.licence_of(root, shot),
            "source_sha256": source_sha,
            "category": place.category, "transform": json.dumps(params, sort_keys=True), "sha256": _sha256(blob),
        })  # fmt: skip
    return rows


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=manifests.MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["path"]))
    outputs.atomic_write(path, buffer.getvalue())
