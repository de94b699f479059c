"""Match tiers: what kind of duplicate a reported pair is.

- ``identical``: the two files hold the same bytes (BLAKE2b of the content).
- ``same photo``: one photo and an edited copy of it (resized, recompressed, cropped, recoloured, slightly
  rotated): once one is mapped onto the other, their pixels agree (samespace.verification.pixel_agreement): a
  normalised correlation of at least :data:`MIN_CORRELATION` over at least :data:`MIN_OVERLAP` of one of them.
  The map starts corner to corner (a resized, recompressed or recoloured copy) and, when spatial verification
  found more than chance inliers (:data:`MIN_INLIERS`), from its homography too; a start whose pixels do not
  agree yet is refined by aligning the grey levels (verification.aligned: an affine map, as an edit makes), so a
  crop or a turn of a photo with few keypoints lines up too.
- ``same space``: any other reported pair: a different shot of the place.

A different shot of a place does not pass: parallax, light and moving things leave its pixels apart even once
aligned. MIN_CORRELATION and MIN_OVERLAP were chosen on the real-photo training split (docs/quality.md, "Match
tiers").
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
MIN_INLIERS = verification.FLOOR + 1  # a homography with more inliers than chance is a start worth aligning from
# An edit crops, resizes and turns a photo: a fitted map must be nearly a similarity. Free affine maps let two
# smooth skies or seas line up by shearing and squeezing one photo into a strip of the other
MAX_STRETCH = 1.1  # ratio of the map's two singular values (1 for a similarity)
MAX_ZOOM = 2.0  # a copy cropped to half its side, or shrunk to half, at most
COPY_SCORE = 1.0  # what an identical or same-photo pair scores, whatever the method
SAME_SPACE_MAX_SCORE = 0.999999  # the most a different shot scores: below a copy after rounding to 6 decimals


def is_same_photo(found: verification.Match, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two photos are one photo and an edited copy (the rules of the module docstring): ``a`` and ``b``
    are their :func:`verification.gray_view` images, ``found`` their verification (its homography maps ``a`` to
    ``b``). The photo with more detail (more pixels neither black nor white) is aligned onto the other, whatever
    the pair's order: a copy with black corners does not align onto its photo as well as the photo onto it."""
    homography = found.homography if found.inliers >= MIN_INLIERS else None
    if _detail(b) > _detail(a):
        if homography is not None:
            homography = np.linalg.inv(homography) if abs(np.linalg.det(homography)) > 1e-12 else None
        a, b = b, a
    return _one_way(homography, a, b)


def _detail(view: np.ndarray) -> tuple[float, float]:
    """How much a grey view shows (its share of informative pixels), then its mean grey level to break ties."""
    return float(verification.informative(view).mean()), float(view.mean())


def _one_way(homography: np.ndarray | None, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` maps onto ``b`` as an edit: corner to corner or by ``homography``'s affine part, as they are
    or refined by aligning the grey levels."""
    starts = [verification.frame_map(a, b)]
    if homography is not None:
        fitted = verification.affine_part(homography, a.shape)
        if is_edit(fitted):
            starts.append(fitted)
    for start in starts:
        if _agrees(a, b, start):
            return True
    for start in starts:
        refined = verification.aligned(a, b, start)
        if refined is not None and is_edit(refined) and _agrees(a, b, refined):
            return True
    return False


def is_edit(affine: np.ndarray) -> bool:
    """Whether an affine map (3 x 3) is one an edit makes: nearly a similarity (:data:`MAX_STRETCH`), zooming by
    at most :data:`MAX_ZOOM` either way, not a mirror.

    >>> turn = np.array([[np.cos(0.2), -np.sin(0.2), 5.0], [np.sin(0.2), np.cos(0.2), 0.0], [0.0, 0.0, 1.0]])
    >>> is_edit(1.25 * turn), is_edit(np.diag([1.0, 0.5, 1.0])), is_edit(np.diag([3.0, 3.0, 1.0]))
    (True, False, False)
    """
    linear = np.asarray(affine, np.float64)[:2, :2]
    if not np.isfinite(linear).all() or np.linalg.det(linear) <= 0:
        return False
    high, low = np.linalg.svd(linear, compute_uv=False)
    return bool(high <= MAX_STRETCH * low and 1 / MAX_ZOOM <= np.sqrt(high * low) <= MAX_ZOOM)


def _agrees(a: np.ndarray, b: np.ndarray, homography: np.ndarray) -> bool:
    agreement = verification.pixel_agreement(a, b, homography)
    return agreement.correlation >= MIN_CORRELATION and agreement.overlap >= MIN_OVERLAP


def tiered_scores(scores: np.ndarray, pair_tiers: Sequence[str]) -> np.ndarray:
    """Scores that rank copies above re-shoots: an ``identical`` or ``same photo`` pair scores
    :data:`COPY_SCORE` (its pixels show one photo, whatever the method estimated), a ``same space`` pair at
    most :data:`SAME_SPACE_MAX_SCORE`.

    >>> tiered_scores(np.array([0.42, 0.9999999, 0.7]), [SAME_PHOTO, SAME_SPACE, IDENTICAL]).tolist()
    [1.0, 0.999999, 1.0]
    """
    scores = np.asarray(scores, np.float64)
    if not len(pair_tiers):
        return scores
    copies = np.isin(np.asarray(pair_tiers), (IDENTICAL, SAME_PHOTO))
    return np.where(copies, COPY_SCORE, np.minimum(scores, SAME_SPACE_MAX_SCORE))


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


Decoded = dict[int, tuple[np.ndarray, float] | None]  # photo index -> decoded image and aspect (None: unreadable)


def match_tiers(paths: Sequence[str], n_scored: int, scorer: PairScorer, left: np.ndarray,
                right: np.ndarray, decoded: Decoded | None = None) -> list[str]:
    """The match tier of each reported pair (samespace.tiers). The paired photos (only those) are decoded again
    for their pixels, once per run when the caller passes the same ``decoded`` cache to every call; keypoints come
    from the scorer when it has them (verified, calibrated), else from that decoding."""
    own: Sequence[verification.LocalFeatures] | None = getattr(scorer, "keypoints", None)
    decoded = {} if decoded is None else decoded
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


def copies_below_threshold(paths: Sequence[str], scorer: PairScorer, threshold: float, n_new: int | None = None,
                           decoded: Decoded | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pairs a scorer puts just under ``threshold`` (its ``near_misses``; none for a scorer without them) whose
    pixels show one photo (``identical`` or ``same photo``): a copy is a duplicate whatever its score, so the
    finder reports them too. ``paths``: the scored photos, in the scorer's order; ``n_new``: only pairs of one of
    the first ``n_new`` photos and one of the others (new photos against a library)."""
    near_misses = getattr(scorer, "near_misses", None)
    if near_misses is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    left, right = near_misses(threshold)
    if n_new is not None:
        across = (left < n_new) & (right >= n_new)
        left, right = left[across], right[across]
    if not len(left):
        return left, right
    found = np.isin(np.asarray(match_tiers(paths, len(paths), scorer, left, right, decoded)), (IDENTICAL, SAME_PHOTO))
    return left[found], right[found]


def with_copies(scorer: PairScorer, paths: Sequence[str], threshold: float, left: np.ndarray, right: np.ndarray,
                scores: np.ndarray, n_new: int | None = None, decoded: Decoded | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The duplicate pairs (left, right, scores) plus :func:`copies_below_threshold`, each scoring
    :data:`COPY_SCORE`, and how many were added."""
    if not len(paths):
        return left, right, scores, 0
    extra_left, extra_right = copies_below_threshold(paths, scorer, threshold, n_new, decoded)
    if not len(extra_left):
        return left, right, scores, 0
    return (np.concatenate([left, extra_left]), np.concatenate([right, extra_right]),
            np.concatenate([scores, np.full(len(extra_left), COPY_SCORE)]), len(extra_left))


def pair_parts(pair: Sequence[Any]) -> tuple[str, str, float, str]:
    """A JSON pair ``[path, path, score, tier]`` as a tuple (a pair written without a tier: ``same space``)."""
    a, b, score = pair[0], pair[1], float(pair[2])
    return a, b, score, str(pair[3]) if len(pair) > 3 else SAME_SPACE
