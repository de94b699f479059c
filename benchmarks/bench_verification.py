"""Spatial verification's cost: the project's matcher against OpenCV's brute-force matcher, side by side.

    python benchmarks/bench_verification.py "data/real/Training Data" [more folders] [--repeat 3]

Each folder is embedded as the calibrated method embeds it (GeM vectors and SIFT keypoints); every pair with a cosine
of at least ``calibrated_score.VERIFY_COSINE`` (the pairs the calibrated score may verify) is verified three times
per repeat, alternating:

- ``opencv``: RootSIFT descriptors matched by ``cv2.BFMatcher(NORM_L2).knnMatch(k=2)``, the ratio test, one match
  per keypoint (nearest first, then the first of equally near ones), RANSAC: how ``verification.match`` counted
  before it computed the distances itself;
- ``project``: ``verification.match_pairs``, as the scorers verify: ``verification.match`` (``ratio_matches``: one
  matrix product per pair) in one thread per core, each with numpy's BLAS on one thread;
- ``serial``: ``verification.match`` one pair at a time with numpy's BLAS threads as they are (one per core by
  default): how the scorers verified before, which must give the same matches.

Both with one match per keypoint (the calibrated score's count) and with every match (``unique=False``, the verified
method's). Prints the best time per pair of each, their ratio, and how many pairs' inlier counts or homographies
differ (0 is the requirement: the shipped weights and thresholds were fitted on OpenCV's matches).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from samespace import calibrated_score, finder, labelling, machine, matching, scorer_choice, verification  # noqa: E402


def opencv_match(a: verification.LocalFeatures, b: verification.LocalFeatures, unique: bool) -> verification.Match:
    """The reference: OpenCV's brute-force k = 2 matcher, then the same ratio test, one-to-one rule and RANSAC."""
    if len(a.xy) < 4 or len(b.xy) < 4:
        return verification.Match(0, None)
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(verification.root_sift(a.descriptors),
                                              verification.root_sift(b.descriptors), k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < verification.RATIO * m[1].distance]
    if unique:
        nearest: dict[int, cv2.DMatch] = {}
        for m in good:
            if m.trainIdx not in nearest or m.distance < nearest[m.trainIdx].distance:
                nearest[m.trainIdx] = m
        good = sorted(nearest.values(), key=lambda m: m.queryIdx)
    if len(good) < 4:
        return verification.Match(0, None)
    homography, mask = cv2.findHomography(a.xy[[m.queryIdx for m in good]], b.xy[[m.trainIdx for m in good]],
                                          cv2.RANSAC, verification.REPROJECTION, maxIters=2000, confidence=0.995)
    return verification.Match(0, None) if mask is None else verification.Match(int(mask.sum()), homography)


def same(x: verification.Match, y: verification.Match) -> bool:
    if x.inliers != y.inliers or (x.homography is None) != (y.homography is None):
        return False
    return x.homography is None or np.array_equal(x.homography, y.homography)


def run_folder(folder: Path, repeat: int) -> None:
    paths = labelling.find_images(folder)
    scorer, _, _ = scorer_choice.choose_scorer("calibrated")
    finder.embed_photos(paths, scorer, progress=False)
    scorer.finish()
    n = len(scorer)
    left, right = matching.upper_pairs(0, n, n)
    cosine = np.einsum("ij,ij->i", scorer.vectors[left], scorer.vectors[right])
    verify = cosine >= calibrated_score.VERIFY_COSINE
    pairs = list(zip(left[verify].tolist(), right[verify].tolist(), strict=True))
    keypoints = scorer.keypoints
    print(f"{folder}: {n} photos, {np.mean([len(k.xy) for k in keypoints]):.0f} keypoints a photo, {len(pairs):,} "
          f"pairs with a cosine >= {calibrated_score.VERIFY_COSINE} ({len(pairs) / max(n, 1):.1f} a photo)")
    left_of, right_of = np.array([i for i, _ in pairs], np.int64), np.array([j for _, j in pairs], np.int64)
    workers = machine.usable_cores()
    for unique in (True, False):
        matchers: dict[str, Callable[[], list[verification.Match]]] = {
            "opencv": lambda unique=unique: [opencv_match(keypoints[i], keypoints[j], unique) for i, j in pairs],
            "project": lambda unique=unique: verification.match_pairs(keypoints, left_of, right_of, unique),
            "serial": lambda unique=unique: [verification.match(keypoints[i], keypoints[j], unique) for i, j in pairs],
        }
        best = dict.fromkeys(matchers, np.inf)
        results: dict[str, list[verification.Match]] = {}
        for _ in range(repeat):
            for name, run in matchers.items():
                start = time.perf_counter()
                results[name] = run()
                best[name] = min(best[name], time.perf_counter() - start)
        differ = sum(not same(x, y) for x, y in zip(results["opencv"], results["project"], strict=True))
        assert all(same(x, y) for x, y in zip(results["project"], results["serial"], strict=True))
        per = {name: 1000 * t / max(len(pairs), 1) for name, t in best.items()}
        print(f"  {'one match per keypoint' if unique else 'every match':>22}: opencv {per['opencv']:.3f} ms a pair, "
              f"project {per['project']:.3f} ms a pair, project / opencv time {best['project'] / best['opencv']:.2f}"
              f"; pairs differing {differ}; one pair at a time with numpy's BLAS threads {per['serial']:.3f} ms a "
              f"pair (project / that: {best['project'] / best['serial']:.2f}, {workers} verification threads)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each matcher, alternating; the best counts")
    args = parser.parse_args()
    print(f"cv2 {cv2.__version__}, numpy {np.__version__}, cv2 threads {cv2.getNumThreads()}")
    for folder in args.folders:
        run_folder(folder, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
