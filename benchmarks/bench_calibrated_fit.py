"""Calibrated-score fit benchmark: how the spatial evidence is counted and weighed, compared out of sample on
training splits.

    python benchmarks/bench_calibrated_fit.py --sample-root data/real --generated --json fit.json

Each ``<root>/Training Data`` is embedded as ``samespace calibrate --fit-calibrated`` embeds it (and the generated
sample set's with ``--generated``, seed 0 as that command writes it). Every pair with a cosine of at least
``calibrated_score.VERIFY_COSINE`` is verified twice: with every ratio-test match (``unique=False``, as
``verified`` counts) and with one match per keypoint (:func:`samespace.verification.one_to_one`, the shipped
count). Three models side by side: the shipped model with each count, and, with one match per keypoint, the
shipped features plus a fifth, the inlier share (:func:`inlier_share`: inliers beyond chance as a share of the
keypoints of the photo with fewer; a candidate that was measured and not shipped, docs/quality.md). For each:

- the inliers of unrelated pairs (99.9th percentile, maximum, how many reach 10) and the share of duplicates
  reaching 10;
- the logistic model of the shipped score fitted five times, each time leaving out a fifth of the places of every
  split (places by label modulo 5); each left-out pair is scored by the model that did not see it, and pairs of
  two different folds by the model fitted on everything;
- on those out-of-fold scores: AP per split, and the mean group F1 over collections thinned to 100 / 30 / 10 % of
  places with duplicates (samespace.calibrated_fit.thinned_group_f1) at every threshold of the fit's grid: the best
  and the one the full fit would choose.

Only training splits are read: the Test Data stays a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from samespace import background, calibrated_fit, calibrated_score, scoring_methods, verification  # noqa: E402
from samespace.devsets import sample_set  # noqa: E402

FOLDS = 5
REACHES = 10  # inliers
RELIABILITY_BINS = (0.0, 0.05, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0)  # probability bins of the reliability table
SHOWN_THRESHOLDS = (0.1, 0.2, 0.35, 0.5, 0.75, 0.9)  # the trade-off table's rows
Pairs = dict[str, np.ndarray]
Scoring = Callable[[Pairs], np.ndarray]  # a fitted model: pairs -> probabilities


def inlier_share(inliers: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """``sqrt(max(inliers - FLOOR, 0) / keypoints)``, ``keypoints`` the fewer of the pair's two photos': 9 inliers
    say more of a small or smooth photo with 40 keypoints than of one with 500.

    >>> inlier_share(np.array([3, 13, 13]), np.array([10, 36, 900])).tolist()
    [0.0, 0.5, 0.1]
    """
    beyond = np.maximum(inliers.astype(np.float64) - verification.FLOOR, 0.0)
    return np.sqrt(beyond / np.maximum(keypoints, 1))


class ShareModel:
    """The shipped logistic regression's features plus the inlier share, fitted the same way (each split weighing
    the same, the same C)."""

    def __init__(self, features: list[Pairs]) -> None:
        from sklearn.linear_model import LogisticRegression

        x = np.concatenate([self.columns(f) for f in features])
        y = np.concatenate([f["same"] for f in features])
        weights = np.concatenate([np.full(len(f["same"]), len(y) / (len(features) * len(f["same"])))
                                  for f in features])
        self.model = LogisticRegression(C=calibrated_fit.C, max_iter=2000).fit(x, y, sample_weight=weights)

    @staticmethod
    def columns(f: Pairs) -> np.ndarray:
        return np.stack([f["cosine"], f["background"], calibrated_score.evidence(f["inliers"]),
                         inlier_share(f["inliers"], f["keypoints"])], 1)

    def probability(self, f: Pairs) -> np.ndarray:
        return self.model.predict_proba(self.columns(f))[:, 1]


def shipped_probability(features: list[Pairs]) -> Scoring:
    model = calibrated_fit.fit_coefficients(features)
    return lambda f: model.probability(f["cosine"], f["background"], f["inliers"])


def share_probability(features: list[Pairs]) -> Scoring:
    return ShareModel(features).probability


def out_of_fold(features: list[Pairs], labels: list[np.ndarray], fit: Callable[[list[Pairs]], Scoring],
                ) -> list[np.ndarray]:
    """Scores of every pair by a model that did not see its places (pairs across two held-out folds: the full fit);
    ``fit`` fits a model on pairs and returns its scoring function."""
    scores = [np.zeros(len(f["same"])) for f in features]
    folds = [((lab % FOLDS)[f["left"]], (lab % FOLDS)[f["right"]]) for f, lab in zip(features, labels, strict=True)]
    for fold in [*range(FOLDS), None]:
        train = []
        for f, (a, b) in zip(features, folds, strict=True):
            seen = np.ones(len(a), bool) if fold is None else (a != fold) & (b != fold)
            train.append({k: v[seen] for k, v in f.items()})
        score = fit(train)
        for f, (a, b), out in zip(features, folds, scores, strict=True):
            held = (a != b) if fold is None else (a == fold) & (b == fold)
            out[held] = score({k: v[held] for k, v in f.items()})
    return scores


def evaluate(splits: list[calibrated_fit.SplitFeatures], features: list[Pairs],
             fit: Callable[[list[Pairs]], Scoring] = shipped_probability) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score

    labels = [s.labels for s in splits]
    scores = out_of_fold(features, labels, fit)
    grid = []
    for threshold in calibrated_fit.THRESHOLD_GRID:
        per_split = {}
        for s, p in zip(splits, scores, strict=True):
            rows = calibrated_fit.thinned_group_f1(s, p, threshold)
            per_split[s.name] = {k: float(np.mean([r[k] for r in rows])) for k in ("f1", "precision", "recall")}
            per_split[s.name]["shares"] = {
                str(share): {k: float(np.mean([r[k] for r in rows if r["share"] == share]))
                             for k in ("f1", "precision", "recall")} for share in calibrated_fit.SHARES}
        grid.append({"threshold": threshold, "mean_group_f1": float(np.mean([v["f1"] for v in per_split.values()])),
                     "splits": per_split})
    negatives = np.concatenate([f["inliers"][~f["same"]] for f in features])
    return {
        "unrelated_inliers_p99_9": float(np.percentile(negatives, 99.9)),
        "unrelated_inliers_max": int(negatives.max()),
        f"unrelated_pairs_reaching_{REACHES}": {s.name: int((f["inliers"][~f["same"]] >= REACHES).sum())
                                                 for s, f in zip(splits, features, strict=True)},
        f"duplicates_reaching_{REACHES}": {s.name: float((f["inliers"][f["same"]] >= REACHES).mean())
                                           for s, f in zip(splits, features, strict=True)},
        "out_of_fold_ap": {s.name: float(average_precision_score(f["same"], p))
                           for s, f, p in zip(splits, features, scores, strict=True)},
        "best": max(grid, key=lambda g: g["mean_group_f1"]),
        "grid": grid,
        "reliability": {s.name: reliability(f["same"], p) for s, f, p in zip(splits, features, scores, strict=True)},
    }


def reliability(same: np.ndarray, probabilities: np.ndarray) -> list[dict[str, float]]:
    """Per bin of :data:`RELIABILITY_BINS`: its pairs, their mean probability and the share that are duplicates.

    >>> reliability(np.array([False, True, True]), np.array([0.01, 0.95, 0.99]))[-1]
    {'from': 0.9, 'to': 1.0, 'pairs': 2, 'mean_probability': 0.97, 'duplicates': 1.0}
    """
    bins = []
    for low, high in zip(RELIABILITY_BINS, RELIABILITY_BINS[1:], strict=False):
        inside = (probabilities >= low) & ((probabilities < high) if high < 1.0 else (probabilities <= high))
        bins.append({"from": low, "to": high, "pairs": int(inside.sum()),
                     "mean_probability": round(float(probabilities[inside].mean()), 6) if inside.any() else 0.0,
                     "duplicates": round(float(same[inside].mean()), 6) if inside.any() else 0.0})
    return bins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample-root", action="append", default=[], help="a set root with 'Training Data'")
    parser.add_argument("--generated", action="store_true", help="also the generated sample set (seed 0)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(r) for r in args.sample_root]
        if args.generated or not roots:
            roots.append(sample_set.write_sample_dataset(Path(tmp) / "generated", seed=0))
        splits = [calibrated_fit.embed_split(root / "Training Data", root.name) for root in roots]
    bank, places = calibrated_fit.background_of(splits)
    shipped = background.load()
    if shipped.places != tuple(places):
        print("note: these splits' background differs from the shipped one", file=sys.stderr)
    results: dict[str, Any] = {}
    for name, unique in (("every match (verified's count)", False), ("one match per keypoint (shipped)", True)):
        features = [calibrated_fit.pair_features(s, bank, places, unique) for s in splits]
        results[name] = evaluate(splits, features)
    for split, f in zip(splits, features, strict=True):  # one match per keypoint
        counts = np.array([len(k.xy) for k in split.keypoints])
        f["keypoints"] = np.minimum(counts[f["left"]], counts[f["right"]])
    results["one match per keypoint, plus the inlier share (not shipped)"] = evaluate(splits, features,
                                                                                      share_probability)
    shipped_threshold = scoring_methods.CALIBRATED_THRESHOLD
    print(f"{sum(len(s.labels) for s in splits)} photos in {len(splits)} training splits; "
          f"out-of-fold over {FOLDS} folds of places; {time.perf_counter() - start:.0f} s")
    print("| inliers counted with | unrelated 99.9 % / max | unrelated reaching 10 | duplicates reaching 10 | "
          "out-of-fold AP | best mean group F1 (threshold) | at the shipped threshold |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        at = next(g for g in r["grid"] if abs(g["threshold"] - shipped_threshold) < 1e-9)
        per = " / ".join(f"{v['f1']:.3f} (P {v['precision']:.3f} R {v['recall']:.3f})" for v in at["splits"].values())
        print(f"| {name} | {r['unrelated_inliers_p99_9']:.0f} / {r['unrelated_inliers_max']} | "
              f"{' / '.join(map(str, r[f'unrelated_pairs_reaching_{REACHES}'].values()))} | "
              f"{' / '.join(f'{v:.3f}' for v in r[f'duplicates_reaching_{REACHES}'].values())} | "
              f"{' / '.join(f'{v:.4f}' for v in r['out_of_fold_ap'].values())} | "
              f"{r['best']['mean_group_f1']:.4f} ({r['best']['threshold']:.2f}) | "
              f"{at['mean_group_f1']:.4f}: {per} |")
    print(f"splits in order: {', '.join(s.name for s in splits)}; shipped threshold {shipped_threshold}")
    shipped_model = results["one match per keypoint (shipped)"]
    print("\nThe shipped model out of fold, group precision / recall per share of places with duplicates:")
    columns = [f"{s.name} {share:.0%}" for s in splits for share in calibrated_fit.SHARES]
    print("| threshold | " + " | ".join(columns) + " |")
    print("| --- " * (1 + len(columns)) + "|")
    for g in shipped_model["grid"]:
        if any(abs(g["threshold"] - t) < 1e-9 for t in SHOWN_THRESHOLDS):
            cells = [f"{v['precision']:.3f} / {v['recall']:.3f}" for s in splits
                     for v in g["splits"][s.name]["shares"].values()]
            print(f"| {g['threshold']:.2f} | " + " | ".join(cells) + " |")
    print("\nReliability out of fold: pairs, mean probability, share that are duplicates")
    print("| probability | " + " | ".join(s.name for s in splits) + " |")
    print("| --- " * (1 + len(splits)) + "|")
    for k, (low, high) in enumerate(zip(RELIABILITY_BINS, RELIABILITY_BINS[1:], strict=False)):
        cells = [f"{b['pairs']:,}: {b['mean_probability']:.3f}, {b['duplicates']:.3f}"
                 for b in (shipped_model["reliability"][s.name][k] for s in splits)]
        print(f"| {low:.2f}-{high:.2f} | " + " | ".join(cells) + " |")
    if args.json:
        from samespace import outputs

        outputs.atomic_write(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
