"""Match tiers: what kind of duplicate a reported pair is.

- ``identical``: the two files hold the same bytes (BLAKE2b of the content).
- ``same photo``: one photo and an edited copy of it (resized, recompressed, cropped, recoloured, slightly
  rotated): once one is mapped onto the other, their pixels agree (samespace.verification.pixel_agreement): a
  normalised correlation of at least :data:`MIN_CORRELATION` over at least :data:`MIN_OVERLAP` of one of them.
  Two maps are tried: corner to corner (a resized, recompressed or recoloured copy, which needs no keypoints, so
  textureless photos are tiered too) and the homography of spatial verification when it has :data:`MIN_INLIERS`
  inliers and almost no perspective (a crop or a rotation; a copy is not seen from elsewhere).
- ``same space``: any other reported pair: a different shot of the place.

A different shot of a place does not pass: parallax, light and moving things leave its pixels apart even where a
homography fits its matches. MIN_CORRELATION, MIN_OVERLAP, MIN_INLIERS and MAX_PERSPECTIVE were chosen on the
real-photo training split (docs/quality.md, "Match tiers").
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
MIN_CORRELATION = 0.95  # edited copies of the training photos: 0.97 and above; different shots: 0.83 at most
MIN_OVERLAP = 0.75  # a 10 degree rotation keeps about 0.85 of the photo
MIN_INLIERS = 8  # a homography from fewer matches is not tried (the pixels would reject it, at some cost)
MAX_PERSPECTIVE = 0.03


def perspective(homography: np.ndarray) -> float:
    """How far a homography is from an affine map: the scale change it makes across 256 pixels
    (``256 * (|h20| + |h21|) / |h22|``; 0 for a resize, crop or rotation)."""
    h = np.asarray(homography, np.float64)
    if not np.isfinite(h).all() or abs(h[2, 2]) < 1e-12:
        return float("inf")
    return float(256.0 * (abs(h[2, 0]) + abs(h[2, 1])) / abs(h[2, 2]))


def is_same_photo(found: verification.Match, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two photos are one photo and an edited copy (the rules of the module docstring): ``a`` and ``b``
    are their :func:`verification.gray_view` images, ``found`` their verification (its homography maps ``a`` to
    ``b``)."""
    maps = [verification.frame_map(a, b)]
    if (found.homography is not None and found.inliers >= MIN_INLIERS
            and perspective(found.homography) <= MAX_PERSPECTIVE):
        maps.append(found.homography)
    for homography in maps:
        agreement = verification.pixel_agreement(a, b, homography)
        if agreement.correlation >= MIN_CORRELATION and agreement.overlap >= MIN_OVERLAP:
            return True
    return False


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
    views: Callable[[int], np.ndarray | None],
    features: Callable[[int], verification.LocalFeatures | None],
    matcher: Callable[[int, int], verification.Match] | None = None,
) -> list[str]:
    """The tier of each pair (paths[left[k]], paths[right[k]]).

    ``views(i)``: photo i's :func:`verification.gray_view` (None when it can no longer be decoded: a pair with it
    can only be ``identical`` or ``same space``); ``features(i)``: its keypoints (None: only the corner-to-corner
    map is tried); ``matcher``: a cached verification of two photos (the calibrated scorer's), else
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
        view_i, view_j = views(i), views(j)
        if view_i is None or view_j is None:
            out.append(SAME_SPACE)
            continue
        a, b = features(i), features(j)
        if a is None or b is None:
            found = verification.Match(0, None)
        else:
            found = matcher(i, j) if matcher is not None else verification.match(a, b)
        out.append(SAME_PHOTO if is_same_photo(found, view_i, view_j) else SAME_SPACE)
    return out


def match_tiers(paths: Sequence[str], n_scored: int, scorer: PairScorer, left: np.ndarray,
                right: np.ndarray) -> list[str]:
    """The match tier of each reported pair (samespace.tiers). The paired photos (only those) are decoded again
    for their pixels; keypoints come from the scorer when it has them (verified, calibrated), else from that
    decoding."""
    own: list[verification.LocalFeatures] | None = getattr(scorer, "keypoints", None)
    decoded: dict[int, tuple[np.ndarray, float] | None] = {}
    found_features: dict[int, verification.LocalFeatures | None] = {}

    def decode(i: int) -> tuple[np.ndarray, float] | None:
        if i not in decoded:
            try:
                decoded[i] = decoding.decode_image(paths[i])
            except (OSError, ValueError):  # gone or changed since the scan: no pixels, no "same photo"
                decoded[i] = None
        return decoded[i]

    def views(i: int) -> np.ndarray | None:
        image = decode(i)
        return None if image is None else verification.gray_view(*image)

    def features(i: int) -> verification.LocalFeatures | None:
        if own is not None and i < n_scored:
            return own[i]
        if i not in found_features:
            image = decode(i)
            found_features[i] = None if image is None else verification.local_features(*image)
        return found_features[i]

    cached = getattr(scorer, "match", None)

    def matcher(i: int, j: int) -> verification.Match:
        if cached is not None and i < n_scored and j < n_scored:
            return cached(i, j)
        a, b = features(i), features(j)
        assert a is not None and b is not None
        return verification.match(a, b)

    return pair_tiers(paths, left, right, views, features, matcher)


def pair_parts(pair: Sequence[Any]) -> tuple[str, str, float, str]:
    """A JSON pair ``[path, path, score, tier]`` as a tuple (a pair written without a tier: ``same space``)."""
    a, b, score = pair[0], pair[1], float(pair[2])
    return a, b, score, str(pair[3]) if len(pair) > 3 else SAME_SPACE
