"""Match tiers: what kind of duplicate a reported pair is.

- ``identical``: the two files hold the same bytes (BLAKE2b of the content).
- ``same photo``: one photo and an edited copy of it (resized, recompressed, cropped, recoloured, slightly
  rotated): spatial verification (samespace.verification) finds many matches, most of the smaller photo's
  keypoints among them, and they fit a transform with almost no perspective (a copy is not seen from elsewhere).
- ``same space``: any other reported pair: a different shot of the place.

The three rules of ``same photo`` were chosen on the real-photo training split: with 20 inliers, a fifth of the
keypoints and a perspective of 0.03, 594 of 600 edited copies (120 photos x resize 50 %, JPEG quality 40, crop to
80 %, grayscale, rotation of 10 degrees) are ``same photo`` and none of its 24 different-shot pairs nor of the 300
most alike pairs of different places (docs/quality.md, "Match tiers").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from samespace import decoding, verification

if TYPE_CHECKING:
    from samespace.scorers import PairScorer

IDENTICAL = "identical"
SAME_PHOTO = "same photo"
SAME_SPACE = "same space"
TIERS = (IDENTICAL, SAME_PHOTO, SAME_SPACE)  # strongest first
MIN_INLIERS = 20
MIN_MATCHED_SHARE = 0.2  # inliers / keypoints of the photo with fewer
MAX_PERSPECTIVE = 0.03


def perspective(homography: np.ndarray) -> float:
    """How far a homography is from an affine map: the scale change it makes across 256 pixels
    (``256 * (|h20| + |h21|) / |h22|``; 0 for a resize, crop or rotation)."""
    h = np.asarray(homography, np.float64)
    if not np.isfinite(h).all() or abs(h[2, 2]) < 1e-12:
        return float("inf")
    return float(256.0 * (abs(h[2, 0]) + abs(h[2, 1])) / abs(h[2, 2]))


def is_same_photo(found: verification.Match, a: verification.LocalFeatures, b: verification.LocalFeatures) -> bool:
    """Whether a verified pair is one photo and an edited copy (the three rules of the module docstring)."""
    fewer = min(len(a.xy), len(b.xy))
    return (found.homography is not None and found.inliers >= MIN_INLIERS
            and found.inliers >= MIN_MATCHED_SHARE * fewer and perspective(found.homography) <= MAX_PERSPECTIVE)


def content_digest(path: str | Path) -> str | None:
    """BLAKE2b of a file's bytes (None when it cannot be read, or is no longer a regular file: a FIFO put in a
    photo's place is never opened for reading, so it cannot block)."""
    try:
        content, _ = decoding.read_photo(path)
    except (OSError, ValueError):
        return None
    return hashlib.blake2b(content).hexdigest()


def pair_tiers(
    paths: Sequence[str | Path],
    left: np.ndarray,
    right: np.ndarray,
    features: Callable[[int], verification.LocalFeatures | None],
    matcher: Callable[[int, int], verification.Match] | None = None,
) -> list[str]:
    """The tier of each pair (paths[left[k]], paths[right[k]]).

    ``features(i)``: photo i's keypoints (None when it has none: a pair with it can only be ``identical`` or
    ``same space``); ``matcher``: a cached verification of two photos (the calibrated scorer's), else
    :func:`verification.match`. Each file is read once for its digest, only when it is in a pair.
    """
    digests: dict[int, str | None] = {}

    def digest(i: int) -> str | None:
        if i not in digests:
            digests[i] = content_digest(paths[i])
        return digests[i]

    out = []
    for i, j in zip(np.asarray(left).tolist(), np.asarray(right).tolist(), strict=True):
        first, second = digest(i), digest(j)
        if first is not None and first == second:
            out.append(IDENTICAL)
            continue
        a, b = features(i), features(j)
        if a is None or b is None:
            out.append(SAME_SPACE)
            continue
        found = matcher(i, j) if matcher is not None else verification.match(a, b)
        out.append(SAME_PHOTO if is_same_photo(found, a, b) else SAME_SPACE)
    return out


def match_tiers(paths: Sequence[str], n_scored: int, scorer: PairScorer, left: np.ndarray,
                right: np.ndarray) -> list[str]:
    """The match tier of each reported pair (samespace.tiers). Keypoints come from the scorer when it has them
    (verified, calibrated), else from decoding the paired photos again (only those)."""
    own: list[verification.LocalFeatures] | None = getattr(scorer, "keypoints", None)
    decoded: dict[int, verification.LocalFeatures | None] = {}

    def features(i: int) -> verification.LocalFeatures | None:
        if own is not None and i < n_scored:
            return own[i]
        if i not in decoded:
            try:
                image, aspect = decoding.decode_image(paths[i])
                decoded[i] = verification.local_features(image, aspect)
            except (OSError, ValueError):  # gone or changed since the scan: no keypoints, no "same photo"
                decoded[i] = None
        return decoded[i]

    cached = getattr(scorer, "match", None)

    def matcher(i: int, j: int) -> verification.Match:
        if cached is not None and i < n_scored and j < n_scored:
            return cached(i, j)
        a, b = features(i), features(j)
        assert a is not None and b is not None
        return verification.match(a, b)

    return pair_tiers(paths, left, right, features, matcher)


def pair_parts(pair: Sequence[Any]) -> tuple[str, str, float, str]:
    """A JSON pair ``[path, path, score, tier]`` as a tuple (a pair written without a tier: ``same space``)."""
    a, b, score = pair[0], pair[1], float(pair[2])
    return a, b, score, str(pair[3]) if len(pair) > 3 else SAME_SPACE
