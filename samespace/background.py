"""The fixed background: how alike a photo is to photos of unrelated places that ship with the package.

The ``calibrated`` score (samespace.calibrated_score) subtracts from a pair's cosine how alike its two photos are to
*unrelated* photos: a photo of a generic kitchen is close to many kitchens, so a high cosine says less about it than
about a photo of a landmark. The ``relative`` method measures that against the other photos of the same run, so a
pair's score moves when photos are added to or removed from the folder. Here it is measured against a fixed set,
the same in every run: one photo of every place of the development sets' training splits (the real-photo set and
the generated rooms), as GeM-pooled EfficientNet-Lite0 unit vectors (``samespace/data/background.npz``, float16,
written by ``samespace calibrate --fit-calibrated``). A pair's score therefore depends on its two photos only.

>>> import numpy as np
>>> bank = np.eye(3, dtype=np.float32)
>>> similarity(np.array([[1.0, 0.0, 0.0]], np.float32), bank, k=2).round(3).tolist()
[0.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

BANK_FILE = Path(__file__).with_name("data") / "background.npz"
K = 10  # background photos averaged (as local scaling's neighbourhood)
# A background photo at least this alike to the query is taken to be the query itself (a user scanning the
# development set), not background: it is left out, so a shipped photo is not scored against its own copy.
SELF_MATCH = 0.98


@dataclass(frozen=True)
class Background:
    """The shipped background: unit rows (M, D) float32, the backbone and pooling they come from, and the place
    of each row (``<split>:<place>``)."""

    vectors: np.ndarray
    backbone: str
    pooling: str
    places: tuple[str, ...]


@lru_cache(maxsize=1)
def load(path: str | Path = BANK_FILE) -> Background:
    """The background file (cached). Raises FileNotFoundError naming the file when the package lacks it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the calibrated method's background is missing (reinstall samespace, or "
                                "`samespace calibrate --fit-calibrated` in a source checkout)")
    with np.load(path, allow_pickle=False) as data:
        vectors = np.asarray(data["vectors"], np.float32)
        norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Background(np.ascontiguousarray(vectors / norms), str(data["backbone"]), str(data["pooling"]),
                          tuple(str(p) for p in data["places"]))


def save(path: str | Path, vectors: np.ndarray, backbone: str, pooling: str, places: list[str]) -> None:
    """Write a background file (float16 rows: half the bytes, cosines change by under 1e-3)."""
    from samespace import outputs

    outputs.atomic_write(Path(path), lambda f: np.savez_compressed(
        f, vectors=np.asarray(vectors, np.float16), backbone=np.array(backbone), pooling=np.array(pooling),
        places=np.array(places)))
    load.cache_clear()


def similarity(unit: np.ndarray, bank: np.ndarray, k: int = K, exclude: np.ndarray | None = None,
               batch: int = 4096) -> np.ndarray:
    """Each row's mean cosine to its ``k`` nearest rows of ``bank`` (both L2-normalised), float64 (N,).

    Rows of ``bank`` at :data:`SELF_MATCH` or above are left out, and so are those where ``exclude`` (N, M bool,
    optional: a training photo's own place) is true.
    """
    unit = np.asarray(unit, np.float32)
    out = np.zeros(len(unit), np.float64)
    k = min(k, len(bank))
    for start in range(0, len(unit), batch):
        sims = unit[start : start + batch] @ bank.T
        sims[sims >= SELF_MATCH] = -np.inf
        if exclude is not None:
            sims[exclude[start : start + batch]] = -np.inf
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]
        out[start : start + batch] = np.where(np.isfinite(top), top, 0.0).mean(1)
    return out
