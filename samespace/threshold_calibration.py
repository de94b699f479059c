"""Thresholds from labelled splits: best pair F1, best group F1, and ``samespace calibrate``, which reproduces
scoring_methods.DEFAULT_THRESHOLDS.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from samespace import cli, decoding, labelling, scoring_methods

if TYPE_CHECKING:
    pass
from samespace.devsets import sample_set


@dataclass(frozen=True)
class Calibration:
    """The best-F1 operating point of one method on one set of labelled pairs."""

    threshold: float
    f1: float
    precision: float
    recall: float


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> Calibration:
    """The operating point maximising F1 of ``score >= threshold`` (scikit-learn's precision-recall curve).

    The threshold is placed halfway between the lowest score kept and the next lower score (a margin on both
    sides), rounded to 4 decimals when that does not cross either.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        raise ValueError("no positive pairs to calibrate on")
    from sklearn import metrics  # here, not at the top: ~1 s of every finder start

    precision, recall, thresholds = metrics.precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    lowest_kept = thresholds[best]
    lower = scores[scores < lowest_kept]
    below = lower.max() if len(lower) else lowest_kept - 1e-3
    threshold = float(np.round((lowest_kept + below) / 2, 4))
    if not below < threshold <= lowest_kept:
        threshold = float((lowest_kept + below) / 2)
    return Calibration(threshold, float(f1[best]), float(precision[best]), float(recall[best]))


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Calibration:
    """Precision, recall and F1 of ``score >= threshold`` (scikit-learn)."""
    from sklearn import metrics

    predicted = np.asarray(scores) >= threshold
    p, r, f1, _ = metrics.precision_recall_fscore_support(
        np.asarray(labels).astype(bool), predicted, average="binary", zero_division=0
    )
    return Calibration(float(threshold), float(f1), float(p), float(r))


def group_f1_at(
    n: int, left: np.ndarray, right: np.ndarray, scores: np.ndarray, labels: np.ndarray, threshold: float
) -> Calibration:
    """Pairwise precision, recall and F1 of the duplicate groups ``find_duplicates.py`` makes at ``threshold``
    (``grouping.linked_groups``) from the scores of every pair (left, right) of n images: a pair counts as found
    when both of its images end in one group."""
    from samespace import grouping

    groups = grouping.linked_groups(n, left, right, scores, threshold)
    point = f1_at(grouping.same_group(n, groups, left, right).astype(np.float64), labels, 0.5)
    return replace(point, threshold=float(threshold))


@dataclass(frozen=True)
class ScoredSplit:
    """Every unique pair (left, right) of a labelled split of n images, with one method's scores."""

    n: int
    left: np.ndarray
    right: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


GROUP_GRID_STEP = 0.0025  # group F1 is a step function of the threshold: searched on this grid
GROUP_GRID_SPAN = 0.10  # either side of the pair-F1 threshold


def best_group_f1_threshold(splits: Sequence[ScoredSplit], around: float) -> Calibration:
    """The threshold whose duplicate groups (:func:`group_f1_at`) have the highest F1 averaged over ``splits``.

    Each split weighs the same, as its own kind of collection, whatever its number of pairs. Searched on a grid
    of :data:`GROUP_GRID_STEP` within :data:`GROUP_GRID_SPAN` of ``around`` (the pair-F1 threshold); where
    neighbouring grid points tie at the best, the middle one of their run. Precision, recall and F1 are the means
    over the splits.
    """
    start = np.floor(np.round((around - GROUP_GRID_SPAN) / GROUP_GRID_STEP, 6)) * GROUP_GRID_STEP
    grid = np.round(start + GROUP_GRID_STEP * np.arange(int(round(2 * GROUP_GRID_SPAN / GROUP_GRID_STEP)) + 1), 4)
    points = []
    for threshold in grid:
        per_split = [group_f1_at(s.n, s.left, s.right, s.scores, s.labels, threshold) for s in splits]
        points.append(Calibration(float(threshold), *(float(np.mean([getattr(p, k) for p in per_split]))
                                                      for k in ("f1", "precision", "recall"))))
    f1 = np.array([p.f1 for p in points])
    first = int(np.argmax(f1))
    last = first
    while last + 1 < len(points) and f1[last + 1] == f1[first]:
        last += 1
    return points[(first + last) // 2]



def split_pair_scores(
    split_dir: str | Path,
    methods: Sequence[str] = scoring_methods.REFERENCE_METHODS,
    extras: dict[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores of every unique pair (i < j) of a labelled split for each method, and the pairs' labels.

    The split is the collection (what the relative method's neighbourhoods are computed over). ``extras``, when
    given, receives ``r/<method>`` and ``r_augmented/<method>``: each image's neighbourhood similarity among the
    original and the augmented vectors, for the relative and verified methods.
    """
    from samespace import matching, reference_scoring, scorers

    paths = labelling.find_images(split_dir)
    images, aspects, kept, _ = decoding.decode_images(paths, progress=False)
    groups = labelling.group_ids([paths[k] for k in kept], split_dir)
    n = len(images)
    left, right = matching.upper_pairs(0, n, n)
    out = {}
    for method, scorer in reference_scoring.reference_scorers(methods, images, aspects).items():  # backbones run once
        out[method] = scorer.score(left, right)
        if extras is not None and isinstance(scorer, scorers.RelativeScorer):
            extras[f"r/{method}"] = scorer.cosine_r
            extras[f"r_augmented/{method}"] = scorer.r
    return out, (groups[left] == groups[right]).astype(np.uint8)


# The methods find_duplicates.py recommends: their defaults are the threshold whose *groups* (what a user sees) score
# best on the training splits, not their pairs. Pair F1 put relative's default just above a cliff of the generated
# rooms' groups (README "Default thresholds").
GROUP_CALIBRATED = ("relative", "verified")


def calibrate(
    roots: Sequence[str | Path], methods: Sequence[str] = scoring_methods.REFERENCE_METHODS
) -> dict[str, dict[str, Any]]:
    """Default thresholds from the unique pairs of every ``<root>/Training Data`` (each split is its own
    collection), checked on each ``<root>/Test Data``.

    Returns method -> {"train": best pair F1 on the union of the training pairs; "groups" (methods in
    :data:`GROUP_CALIBRATED`): the best mean group F1 over the training splits (:func:`best_group_f1_threshold`,
    searched around the pair threshold); "default": the threshold the method ships with (the groups' when
    computed, else the pairs'); "test/<root>": pair F1 at the default on the root's Test Data, and
    "groups/test/<root>" group F1 there; "r0" and "r0_augmented": median neighbourhood similarity over the
    training images, of the original and the augmented vectors (relative and verified only)}.
    """
    from samespace import matching

    train: dict[str, list[ScoredSplit]] = {m: [] for m in methods}
    r_values: dict[str, list[np.ndarray]] = {f"{kind}/{m}": [] for m in methods for kind in ("r", "r_augmented")}

    def scored(split_dir: Path, extras: dict[str, Any] | None = None) -> dict[str, ScoredSplit]:
        scores, labels = split_pair_scores(split_dir, methods, extras)
        n = int(round((1 + np.sqrt(1 + 8 * len(labels))) / 2))  # len(labels) == n * (n - 1) / 2
        left, right = matching.upper_pairs(0, n, n)
        return {m: ScoredSplit(n, left, right, scores[m], labels) for m in methods}

    for root in roots:
        extras: dict[str, Any] = {}
        for method, split in scored(Path(root) / "Training Data", extras).items():
            train[method].append(split)
            for kind in ("r", "r_augmented"):
                if f"{kind}/{method}" in extras:
                    r_values[f"{kind}/{method}"].append(extras[f"{kind}/{method}"])
    tests = {str(root): scored(Path(root) / "Test Data") for root in roots}
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        splits = train[method]
        point = best_f1_threshold(np.concatenate([s.scores for s in splits]),
                                  np.concatenate([s.labels for s in splits]))
        out[method] = {"train": point, "default": point.threshold}
        if method in GROUP_CALIBRATED:
            out[method]["groups"] = best_group_f1_threshold(splits, around=point.threshold)
            out[method]["default"] = out[method]["groups"].threshold
        for root, by_method in tests.items():
            t = by_method[method]
            out[method][f"test/{root}"] = f1_at(t.scores, t.labels, out[method]["default"])
            if method in GROUP_CALIBRATED:
                out[method][f"groups/test/{root}"] = group_f1_at(t.n, t.left, t.right, t.scores, t.labels,
                                                                 out[method]["default"])
        for kind, key in (("r", "r0"), ("r_augmented", "r0_augmented")):
            if r_values[f"{kind}/{method}"]:
                out[method][key] = float(np.median(np.concatenate(r_values[f"{kind}/{method}"])))
    return out


def _cmd_calibrate(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(r) for r in args.sample_root or []]
        if args.generated or not roots:
            roots.append(sample_set.write_sample_dataset(Path(tmp) / "generated", seed=args.seed))
        if args.fit_calibrated:
            from samespace import calibrated_fit  # model code: not for --help

            _print_fit(calibrated_fit.fit(roots, args.fit_calibrated), args.fit_calibrated)
            return
        results = calibrate(roots, args.methods)
    print("default thresholds: best pair F1 on the training pairs, or best mean group F1 over the training splits "
          f"({', '.join(GROUP_CALIBRATED)}); test F1 at that threshold")
    print(f"{'method':<8} {'F1 of':<6} {'threshold':>9}  {'train F1':>8} {'P':>6} {'R':>6}  {'test F1':>7} {'P':>6} "
          f"{'R':>6}  test split")
    for method, r in results.items():
        rows = [("pairs", r["train"], "test/")] + ([("groups", r["groups"], "groups/test/")] if "groups" in r else [])
        for criterion, tr, prefix in rows:
            tests = [(n, c) for n, c in r.items() if n.startswith(prefix)]
            for k, (name, te) in enumerate(tests):
                head = (f"{method:<8} {criterion:<6} {tr.threshold:>9.4f}  {tr.f1:>8.4f} {tr.precision:>6.3f} "
                        f"{tr.recall:>6.3f}" if k == 0 else " " * 48)
                where = "generated" if "/generated" in name else name[len(prefix):]
                at = "" if tr.threshold == r["default"] else f"  (at the default {r['default']:.4f})"
                print(f"{head}  {te.f1:>7.4f} {te.precision:>6.3f} {te.recall:>6.3f}  {where}{at}")
        if "r0" in r:
            print(f"{method:<8} median neighbourhood similarity on the training splits: r0 {r['r0']:.4f}, "
                  f"r0_augmented {r['r0_augmented']:.4f}")


def _print_fit(result: dict[str, Any], out_dir: Path) -> None:
    c = result["coefficients"]
    print(f"calibrated score: logit = {c.intercept:.4f} + {c.cosine:.4f} cos + {c.background:.4f} background "
          f"+ {c.inliers:.4f} evidence; {result['background_photos']} background photos")
    for name, split in result["splits"].items():
        print(f"  {name}: {split['photos']} photos, {split['pairs']:,} pairs, {split['duplicates']} duplicates")
    print("threshold  mean group F1  " + "  ".join(result["splits"]))
    for g in result["grid"]:
        mark = "  <- default" if g["threshold"] == result["threshold"] else ""
        print(f"{g['threshold']:>9.2f}  {g['mean_group_f1']:>13.4f}  "
              + "  ".join(f"{g[name]:.4f}" for name in result["splits"]) + mark)
    print(f"wrote {out_dir}/background.npz and {out_dir}/calibrated.json")


EXAMPLES = """examples:
  samespace calibrate --sample-root data/sample                        # whash, phash, cosine on the sample set
  samespace calibrate --sample-root data/real --generated --methods relative verified
  samespace calibrate --sample-root data/real --generated --fit-calibrated samespace/data
"""


def main(argv: Sequence[str] | None = None, prog: str = "samespace") -> int:
    """``samespace calibrate ...``: 0 on success, 2 with a one-line error."""
    parser = cli.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser(
        "calibrate",
        help="default thresholds of the reference methods: best F1 of pairs or groups",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cal.add_argument("--sample-root", action="append", help="a folder with 'Training Data/' and 'Test Data/', e.g. "
                     "data/real; repeat for several (default: the generated sample set)")
    cal.add_argument("--generated", action="store_true", help="also the generated sample set (with --sample-root)")
    cal.add_argument("--seed", type=int, default=0, help="sample set seed when generating (default: 0)")
    cal.add_argument("--methods", nargs="+", choices=scoring_methods.REFERENCE_METHODS,
                     default=list(scoring_methods.REFERENCE_METHODS))
    cal.add_argument("--fit-calibrated", type=Path, metavar="DIR",
                     help="fit the calibrated method (background, weights, threshold) on the training splits and "
                     "write background.npz and calibrated.json into DIR (the package ships samespace/data)")
    cal.set_defaults(func=_cmd_calibrate)
    cal.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    # e.g. a --sample-root without both splits: one line, as every command
    return cli.run_reporting_errors(lambda: args.func(args), (labelling.DataError,), args.debug)


if __name__ == "__main__":
    sys.exit(main())
