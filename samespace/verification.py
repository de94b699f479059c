"""Spatial verification: how many local features of two photos agree on one geometric transform.

A photo of a space re-shot from a step aside, cropped to half its side or turned 25 degrees keeps a pooled-feature
cosine near 0.5 to the original, as low as two unrelated look-alike rooms (docs/quality.md:
87 of the 98 real training pairs the relative method misses are such re-shoots). Its local features still match,
and they move together: matched points of one scene seen twice fit one homography (a plane from two viewpoints,
or any scene from one centre), matches between two different scenes do not. This is the spatial re-ranking of
instance retrieval (Philbin et al. 2007, "Object retrieval with large vocabularies and fast spatial matching").

- Each photo: up to :data:`MAX_KEYPOINTS` SIFT keypoints (OpenCV) of its decoded 256 x 256 image, the same array
  the backbone sees (``decoding.decode_image``: one decode path), resized back to the photo's aspect ratio with the
  same pixel count (:func:`unsquashed`); descriptors kept as uint8.
- Each pair: RootSIFT descriptors (Arandjelovic and Zisserman 2012) matched by nearest neighbour with Lowe's ratio
  test (:data:`RATIO`), at most one per keypoint of the second photo (:func:`one_to_one`; the ``verified`` method
  keeps every match, as it was calibrated), then a RANSAC homography (:data:`REPROJECTION` pixels); the evidence
  is the number of inlier matches. OpenCV's RANSAC draws from a fixed seed, so a pair always gets the same count.
- The ``verified`` score (``scorers.VerifiedScorer``) is the relative score plus :func:`bonus`, which grows with the
  inliers above :data:`FLOOR`. The bonus only adds, so it is computed only for pairs that it can lift over a
  threshold: those within :data:`MAX_BONUS` below it.

RATIO, REPROJECTION, FLOOR and WEIGHT were chosen on the real-photo training split only (README, "Spatial
verification").
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image
from threadpoolctl import ThreadpoolController

from samespace import machine

MAX_KEYPOINTS = 500  # per photo, the strongest; 1,000 found no more duplicates on the training split
RATIO = 0.75  # Lowe's ratio test: a match counts when its nearest descriptor is clearly nearer than the second
REPROJECTION = 2.0  # RANSAC inlier distance in pixels of the unsquashed image (256 x 256 pixels' worth)
FLOOR = 4  # inliers that unrelated photos reach by chance (99th percentile of the training negatives: 5)
WEIGHT = 0.05  # bonus per sqrt(inlier above FLOOR)
CAP = 40  # inliers counted at most: MAX_BONUS (0.3) bounds which pairs need verifying
MAX_BONUS = WEIGHT * float(np.sqrt(CAP - FLOOR))
PAIRS_PER_TASK = 64  # pairs a verification thread takes at a time (each about 1 ms)
MAX_ASPECT = 4.0  # a panorama wider than 4:1 is matched as 4:1 (its square holds too few pixels along one side)


@dataclass(frozen=True)
class LocalFeatures:
    """One photo's keypoints: ``xy`` (n, 2) float32 pixel positions, ``descriptors`` (n, 128) uint8 SIFT."""

    xy: np.ndarray
    descriptors: np.ndarray


def unsquashed(image: np.ndarray, aspect: float) -> np.ndarray:
    """The square decoded image resized back to its photo's aspect ratio (width / height), same pixel count.

    The square squashes a 4:3 photo by 3/4 along one axis. A copy turned 25 degrees is squashed along other axes
    of the scene, so the two squares differ by a shear, which SIFT's rotation- and scale-invariant descriptors do
    not undo: back in shape, more positives of the real training split get inliers (602 of 634 against 588, AP of
    the verified score on its neighbour pairs 0.9787 -> 0.9827; README, "Spatial verification").
    """
    a = float(np.clip(aspect, 1 / MAX_ASPECT, MAX_ASPECT))
    side = image.shape[0]
    size = (max(1, round(side * np.sqrt(a))), max(1, round(side / np.sqrt(a))))  # (width, height)
    if size == (image.shape[1], image.shape[0]):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def local_features(image: np.ndarray, aspect: float = 1.0, max_keypoints: int = MAX_KEYPOINTS) -> LocalFeatures:
    """SIFT keypoints of one decoded RGB uint8 square image (S x S x 3) in its photo's shape (:func:`unsquashed`),
    strongest first."""
    gray = cv2.cvtColor(np.ascontiguousarray(unsquashed(image, aspect)), cv2.COLOR_RGB2GRAY)
    # OpenCV's default octave layers, contrast and edge thresholds and sigma; descriptors as uint8 (a quarter the bytes)
    sift = cv2.SIFT_create(max_keypoints, 3, 0.04, 10, 1.6, cv2.CV_8U)
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    keypoints, descriptors = keypoints[:max_keypoints], (descriptors[:max_keypoints] if keypoints else None)
    xy = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    if descriptors is None:
        descriptors = np.zeros((0, 128), np.uint8)
    return LocalFeatures(xy, np.asarray(descriptors, np.uint8))


def pack(features: Sequence[LocalFeatures], max_keypoints: int = MAX_KEYPOINTS) -> dict[str, np.ndarray]:
    """Fixed-shape arrays for the embedding store: ``keypoint_count`` (n,), ``keypoint_xy`` (n, K, 2) float32 and
    ``keypoint_descriptors`` (n, K, 128) uint8, zero beyond each photo's count."""
    n = len(features)
    count = np.zeros(n, np.int32)
    xy = np.zeros((n, max_keypoints, 2), np.float32)
    descriptors = np.zeros((n, max_keypoints, 128), np.uint8)
    for i, f in enumerate(features):
        m = min(len(f.xy), max_keypoints)
        count[i], xy[i, :m], descriptors[i, :m] = m, f.xy[:m], f.descriptors[:m]
    return {"keypoint_count": count, "keypoint_xy": xy, "keypoint_descriptors": descriptors}


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """L1-normalise and take the square root: Euclidean distance then compares like the Hellinger kernel."""
    d = descriptors.astype(np.float32)
    return np.sqrt(d / np.maximum(d.sum(1, keepdims=True), 1e-7))


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # inspects the loaded libraries once (0.6 ms), so that each limit costs ~10 us


def one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """numpy's BLAS on one thread, for a loop of verifications (``with one_blas_thread(): ...``). A pair's distance
    matrix (a few hundred rows) is too small to share between threads; when another process keeps a core busy, a
    second BLAS thread makes each product wait for it: :func:`ratio_matches` took 7-14 ms instead of 1 ms on the
    2-core development machine under load (docs/scale.md, "Spatial verification's cost")."""
    return _blas_controller().limit(limits=1, user_api="blas")


class Match(NamedTuple):
    """What spatial verification found for a pair: the RANSAC inliers and their homography (None: no fit)."""

    inliers: int
    homography: np.ndarray | None


def ratio_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-neighbour matches of descriptor rows ``a`` in ``b`` that pass Lowe's ratio test (:data:`RATIO`):
    ``(query, train, distance)``, query ascending.

    Squared Euclidean distances come from one float32 matrix product, the second nearest from the row with its
    nearest masked; the distances returned are computed directly. It picks the same matches as OpenCV's brute-force
    matcher (k = 2) on each of the 41,369 pairs of the development sets with a cosine of at least 0.5, 1.6-3x faster
    on real photos (docs/scale.md, "Spatial verification's cost").

    >>> query, train, distance = ratio_matches(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[[2, 0]])
    >>> query.tolist(), train.tolist(), distance.tolist()
    ([0, 2], [1, 0], [0.0, 0.0])
    """
    if len(a) == 0 or len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    squared = np.einsum("ij,ij->i", a, a)[:, None] - 2.0 * (a @ b.T)
    squared += np.einsum("ij,ij->i", b, b)
    rows = np.arange(len(a))
    nearest = squared.argmin(1)
    first = squared[rows, nearest]
    squared[rows, nearest] = np.inf
    query = np.flatnonzero(np.sqrt(np.maximum(first, 0.0)) < RATIO * np.sqrt(np.maximum(squared.min(1), 0.0)))
    # The product loses the smallest distances to cancellation (an exact copy's 0 reads ~5e-4); one_to_one breaks
    # ties on them, so the kept matches' distances are computed directly
    difference = a[query] - b[nearest[query]]
    return query, nearest[query], np.sqrt(np.einsum("ij,ij->i", difference, difference))


def one_to_one(train: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Positions (ascending) of the nearest of the matches that share a keypoint of the second photo (``train``);
    of equally near ones, the first.

    A repeated texture (tiles, a grid, foliage) sends many keypoints of one photo to the same keypoint of another,
    and RANSAC counts each as an inlier of a degenerate homography: on the training splits' unrelated pairs that
    gave up to 76 inliers (real) and 17 (generated); with one match per keypoint, 11 and 10, while 89 % and 86 % of
    their duplicates still reach 10 (docs/quality.md, "One-to-one matches").

    >>> one_to_one(np.array([7, 7, 5, 7]), np.array([0.3, 0.1, 0.4, 0.2])).tolist()
    [1, 2]
    """
    order = np.lexsort((np.arange(len(train)), distance))
    _, first = np.unique(np.asarray(train)[order], return_index=True)
    return np.sort(order[first])


def match(a: LocalFeatures, b: LocalFeatures, unique: bool = True) -> Match:
    """Matches of ``a`` in ``b`` that pass the ratio test (:func:`ratio_matches` of RootSIFT descriptors), one per
    keypoint of ``b`` (:func:`one_to_one`; all of them when ``unique`` is False, as the ``verified`` method was
    calibrated), and fit one RANSAC homography (0 when fewer than 4 pass), and that homography (maps ``a``'s pixels
    to ``b``'s)."""
    if len(a.xy) < 4 or len(b.xy) < 4:
        return Match(0, None)
    query, train, distance = ratio_matches(root_sift(a.descriptors), root_sift(b.descriptors))
    if unique:
        kept = one_to_one(train, distance)
        query, train = query[kept], train[kept]
    if len(query) < 4:
        return Match(0, None)
    homography, mask = cv2.findHomography(a.xy[query], b.xy[train], cv2.RANSAC, REPROJECTION, maxIters=2000,
                                          confidence=0.995)
    return Match(0, None) if mask is None else Match(int(mask.sum()), homography)


def match_pairs(features: Sequence[LocalFeatures], left: np.ndarray, right: np.ndarray, unique: bool = True,
                workers: int | None = None) -> list[Match]:
    """:func:`match` of ``features[left[k]]`` and ``features[right[k]]`` for every k, in order.

    The pairs are shared among ``workers`` threads (default: the cores this process may use), each product on one
    BLAS thread (:func:`one_blas_thread`): the matrix products and RANSAC release the GIL, so pairs run side by side
    where one pair's small products gain little from more threads. The matches are those of one thread
    (OpenCV's RANSAC seeds each call alike; tested).

    >>> one = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
    >>> match_pairs([one, one], np.array([0]), np.array([1]))
    [Match(inliers=0, homography=None)]
    """
    pairs = list(zip(np.asarray(left).tolist(), np.asarray(right).tolist(), strict=True))
    workers = machine.usable_cores() if workers is None else workers

    def one_pair(pair: tuple[int, int]) -> Match:
        return match(features[pair[0]], features[pair[1]], unique)

    with one_blas_thread():
        if workers <= 1 or len(pairs) < 2 * PAIRS_PER_TASK:
            return [one_pair(pair) for pair in pairs]
        with ThreadPoolExecutor(workers, thread_name_prefix="samespace-verify") as pool:
            return list(pool.map(one_pair, pairs, chunksize=PAIRS_PER_TASK))


def count_inliers(a: LocalFeatures, b: LocalFeatures, unique: bool = True) -> int:
    """The inliers of :func:`match`."""
    return match(a, b, unique).inliers


def bonus(inliers: np.ndarray) -> np.ndarray:
    """What spatial evidence adds to a pair's relative score: ``WEIGHT * sqrt(inliers - FLOOR)``, 0 up to FLOOR,
    at most :data:`MAX_BONUS`."""
    return WEIGHT * np.sqrt(np.clip(np.asarray(inliers, np.float64), FLOOR, CAP) - FLOOR)


class Agreement(NamedTuple):
    """How well two photos' pixels agree once one is mapped onto the other.

    ``correlation``: the normalised cross-correlation of their lightly blurred grey levels where they overlap and
    neither is black or white (1: the same pixels up to brightness and contrast); ``overlap``: the share of the
    photo that lies more inside the other that does (1 for a crop, about 0.85 for a 10 degree rotation, 0 when the
    map puts them apart)."""

    correlation: float
    overlap: float


AGREEMENT_BLUR = 1.0  # Gaussian sigma in pixels: JPEG blocks and resampling differ between copies, not the scene
MIN_COMPARED_PIXELS = 256


def gray_view(image: np.ndarray, aspect: float = 1.0) -> np.ndarray:
    """The grey levels (float32) of a decoded square image in its photo's shape (:func:`unsquashed`): the frame in
    which :func:`local_features` finds keypoints, so a :class:`Match`'s homography applies to it."""
    gray = cv2.cvtColor(np.ascontiguousarray(unsquashed(image, aspect)), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.GaussianBlur(gray, (0, 0), AGREEMENT_BLUR)


def frame_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The homography that maps ``a``'s frame onto ``b``'s corner to corner (a resized or recompressed copy)."""
    return np.array([[b.shape[1] / a.shape[1], 0.0, 0.0], [0.0, b.shape[0] / a.shape[0], 0.0], [0.0, 0.0, 1.0]])


ALIGN_LEVELS = 3  # coarse to fine: a 64-pixel level first, so a 25 % zoom or a 10 degree turn is within reach
ALIGN_ITERATIONS = 50  # per level
ALIGN_EPS = 1e-4
# Aligned at the coarsest level, a copy's grey levels already agree (about 0.99); pairs under this stop there, so
# most different shots cost a 64-pixel alignment, not a full one
ALIGN_SCREEN = 0.85


def affine_part(homography: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The 3 x 3 affine map nearest (least squares) to ``homography`` at the four corners of a ``shape`` frame:
    an edited copy is an affine map of its photo (a crop, resize or turn), never a change of viewpoint."""
    h, w = shape[:2]
    corners = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    mapped = cv2.perspectiveTransform(corners[None], np.asarray(homography, np.float64))[0]
    solution, *_ = np.linalg.lstsq(np.hstack([corners, np.ones((4, 1))]), mapped, rcond=None)
    return np.vstack([solution.T, [0.0, 0.0, 1.0]])


def aligned(a: np.ndarray, b: np.ndarray, initial: np.ndarray) -> np.ndarray | None:
    """The affine map of ``a``'s pixels to ``b``'s that best aligns two :func:`gray_view` images, refined from
    ``initial`` (3 x 3) by OpenCV's ECC (enhanced correlation coefficient, Evangelidis and Psarakis 2008), coarse
    to fine; None when it does not converge or the coarsest level's grey levels do not agree
    (:data:`ALIGN_SCREEN`). It maximises the very correlation :func:`pixel_agreement` measures, so a copy whose
    keypoints are too few or too imprecise for a homography still lines up."""
    warp = np.asarray(initial, np.float32)[:2].copy()
    pyramid = [(a, b)]
    for _ in range(ALIGN_LEVELS - 1):
        pyramid.append((cv2.pyrDown(pyramid[-1][0]), cv2.pyrDown(pyramid[-1][1])))
    warp[:, 2] /= 2 ** (ALIGN_LEVELS - 1)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ALIGN_ITERATIONS, ALIGN_EPS)
    screened = False
    for level in reversed(range(ALIGN_LEVELS)):
        template, moving = pyramid[level]
        if min(template.shape + moving.shape) >= 8:  # a level too small to align is skipped
            try:  # findTransformECC's warp maps the template's (a's) coordinates to the input's (b's)
                _, warp = cv2.findTransformECC(template, moving, warp, cv2.MOTION_AFFINE, criteria, None, 1)
            except cv2.error:  # no convergence, or a flat image
                return None
            if not screened:
                screened = True
                coarse = pixel_agreement(template, moving, np.vstack([warp.astype(np.float64), [0.0, 0.0, 1.0]]))
                if coarse.correlation < ALIGN_SCREEN:
                    return None
        if level:
            warp[:, 2] *= 2
    return np.vstack([warp.astype(np.float64), [0.0, 0.0, 1.0]])


SATURATED = (8.0, 247.0)  # grey levels at or beyond these are black or white: no detail to compare


def informative(view: np.ndarray) -> np.ndarray:
    """Where a :func:`gray_view` image is neither black nor white (:data:`SATURATED`)."""
    return (view > SATURATED[0]) & (view < SATURATED[1])


def pixel_agreement(a: np.ndarray, b: np.ndarray, homography: np.ndarray) -> Agreement:
    """The :class:`Agreement` of two :func:`gray_view` images when ``homography`` maps ``a``'s pixels to ``b``'s."""
    h = np.asarray(homography, np.float64)
    if not np.isfinite(h).all() or abs(np.linalg.det(h)) < 1e-9:
        return Agreement(-1.0, 0.0)
    (ha, wa), (hb, wb) = a.shape, b.shape
    inverse = cv2.WARP_INVERSE_MAP
    b_on_a = cv2.warpPerspective(b, h, (wa, ha), flags=cv2.INTER_LINEAR | inverse)
    # Where b lands on a (eroded: the border pixels mix in the fill) and where a lands on b
    inside_a = cv2.warpPerspective(np.ones_like(b), h, (wa, ha), flags=cv2.INTER_NEAREST | inverse) > 0.5
    inside_a = cv2.erode(inside_a.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    inside_b = cv2.warpPerspective(np.ones_like(a), h, (wb, hb), flags=cv2.INTER_NEAREST) > 0.5
    overlap = max(float(inside_a.mean()), float(inside_b.mean()))
    # Saturated pixels say nothing of which photo it is (padding, letterbox bars, blown highlights): two different
    # photos turned or framed alike share their black corners, whose contrast would dominate the correlation
    compared = inside_a & informative(a) & informative(b_on_a)
    if compared.sum() < MIN_COMPARED_PIXELS:
        return Agreement(-1.0, overlap)
    x, y = a[compared].astype(np.float64), b_on_a[compared].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return Agreement(float((x * y).sum() / norm) if norm > 0 else -1.0, overlap)
