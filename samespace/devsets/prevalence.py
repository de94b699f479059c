"""Collections that look like real folders: a labelled split thinned to a share of places with duplicates.

A labelled split has every place's photos. A real folder is mostly unique photos: a collection at share ``s`` keeps
every photo of a seeded random ``s``-fraction of the places with two or more photos and ONE (seeded) photo of each
other place, so at ``s = 0`` no photo has a duplicate. ``places`` draws that many places first (seeded) for a
smaller collection. :func:`choose` is pure (paths and labels in, a :class:`Collection` out); :func:`write` puts a
collection on disk as symlinks, in the split's layout, so a finder run sees the same names as on the split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Collection:
    """One drawn collection: ``files`` (paths relative to the split, sorted) and their place ``labels``."""

    share: float
    places: int  # places drawn (photos at share 0)
    seed: int
    files: tuple[str, ...]
    labels: np.ndarray

    @property
    def true_pairs(self) -> int:
        """Unique pairs of photos of one place."""
        _, counts = np.unique(self.labels, return_counts=True)
        return int((counts * (counts - 1) // 2).sum())


def _places(labels: Sequence[int]) -> list[np.ndarray]:
    """Indices of each place's photos, places in order of their first photo."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    return [np.flatnonzero(inverse == k) for k in order]


def choose(files: Sequence[str], labels: Sequence[int], share: float, places: int | None = None,
           seed: int = 0) -> Collection:
    """The collection at ``share`` (0..1) of ``places`` places (None: every place of the split); deterministic.

    ``round(share * m)`` of the ``m`` drawn places with two or more photos keep all their photos; every other drawn
    place keeps one photo. Raises ValueError for a share outside 0..1 or more places than the split has.
    """
    if len(files) != len(labels):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share {share}: not between 0 and 1")
    groups = _places(labels)
    rng = np.random.default_rng([seed, round(share * 1000), places or 0])
    if places is not None:
        if not 0 < places <= len(groups):
            raise ValueError(f"{places} places asked, the split has {len(groups)}")
        groups = [groups[k] for k in sorted(rng.choice(len(groups), size=places, replace=False).tolist())]
    multi = [k for k, g in enumerate(groups) if len(g) > 1]
    whole = set(rng.choice(multi, size=round(share * len(multi)), replace=False).tolist()) if multi else set()
    kept: list[int] = []
    for k, members in enumerate(groups):
        kept += members.tolist() if k in whole else [int(members[int(rng.integers(len(members)))])]
    kept.sort()
    label_array = np.asarray(labels)
    return Collection(share, len(groups), seed, tuple(files[k] for k in kept), label_array[kept])


def write(collection: Collection, split_dir: str | Path, out_dir: str | Path) -> Path:
    """Symlink each photo of ``collection`` into ``out_dir`` at its path relative to ``split_dir``; returns out_dir.

    ``out_dir`` must not exist (a collection folder holds exactly its photos).
    """
    split_dir, out_dir = Path(split_dir).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True)
    for rel in collection.files:
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(split_dir / rel, target)
    return out_dir
