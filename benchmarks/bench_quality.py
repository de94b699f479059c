"""Quality benchmark: the published and the improved recipe beside wHash, pHash and cosine, on held-out splits.

    python benchmarks/bench_quality.py --dataset sample            # generated sample set (written to a temp dir)
    python benchmarks/bench_quality.py --dataset real --data-dir data/real   # samespace devset build data/real

For the dataset: trains the published recipe (const.yaml with backbone=efficientnet_lite0, whose ImageNet
weights install offline) and the improved recipe (improved.yaml) on its Training Data, then on its Test Data
prints, for every unique pair: ROC-AUC, AP and best F1 of both models, wHash, pHash and cosine
(evaluation.evaluate), the relative method (cosine with local scaling: local_scaling.py), the verified method
(relative plus spatial verification of nearest neighbours: verification.py), the calibrated method
(find_duplicates.py's default: calibrated_score.py), AP on the different-shot pairs (real set: positives that
are genuinely different shots, every negative), and the F1 at the threshold find_duplicates.py would use by
default. Then runs find_duplicates.py with its defaults, and with ``--method verified``, on the Test Data and
prints the pairwise precision / recall / F1 of its groups (two photos in one group = predicted duplicates).
Run it under the shared CPU lock:
``flock /tmp/samespace-heavy.lock ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import model_def  # noqa: E402
from samespace import (  # noqa: E402  # noqa: E402
    checkpoint_loading,
    default_model,
    evaluation,
    grouping,
    labelling,
    matching,
    outputs,
    scoring_methods,
    threshold_calibration,
)
from samespace.commands import find  # noqa: E402
from samespace.devsets import sample_set  # noqa: E402

RECIPES = {
    "published": ("const.yaml", ["--hparam", "backbone=efficientnet_lite0"]),
    "improved": ("improved.yaml", []),
}


def train(recipe: str, root: Path, epochs: int, workdir: Path, cache: Path) -> tuple[Path, float]:
    """Train one recipe on ``root/Training Data``; returns (checkpoint folder, seconds)."""
    config, extra = RECIPES[recipe]
    argv = ["--data-dir", str(root), "--config", str(REPO / config), "--epochs", str(epochs), *extra,
            "--checkpoint-dir", str(workdir / f"ckpt-{recipe}"), "--cache-dir", str(cache)]
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        if model_def.main(argv) != 0:
            raise SystemExit(f"training {recipe} failed")
    return Path(out.getvalue().strip().splitlines()[-1]), time.perf_counter() - start


def different_shot_mask(paths: list[Path], test_dir: Path, labels: np.ndarray, left: np.ndarray,
                        right: np.ndarray) -> np.ndarray | None:
    """Pairs to keep for "AP on different-shot pairs": every negative and the positives that are different shots."""
    try:
        from samespace.devsets import manifests
    except ImportError:
        return None
    try:
        shots = manifests.shot_ids(paths, test_dir)
    except Exception:  # noqa: BLE001 - a set without a real-photo manifest has no shot ids
        return None
    return (labels == 0) | (shots[left] != shots[right])


def pairwise_group_scores(document: dict[str, Any], test_dir: Path) -> dict[str, float]:
    """Precision / recall / F1 of "same group" over every unique pair of the split's images (what
    ``threshold_calibration.group_f1_at`` measures on the training splits, here from the finder's own output)."""
    paths = labelling.find_images(test_dir)
    index = {str(p): k for k, p in enumerate(paths)}
    found = [np.array([index[m] for m in group["members"]]) for group in document["groups"]]
    n = len(paths)
    left, right = matching.upper_pairs(0, n, n)
    truth = labelling.group_ids(paths, test_dir)
    point = threshold_calibration.f1_at(grouping.same_group(n, found, left, right).astype(np.float64),
                          truth[left] == truth[right], 0.5)
    return {"precision": point.precision, "recall": point.recall, "f1": point.f1, "groups": len(found)}


def run_find_duplicates(test_dir: Path, workdir: Path, extra: list[str]) -> dict[str, Any]:
    """find_duplicates.py on the split with its defaults (plus ``extra``); its JSON document."""
    out = workdir / f"dups-{len(list(workdir.glob('dups-*')))}.json"
    with contextlib.redirect_stdout(io.StringIO()):
        code = find.main([str(test_dir), "--json", str(out), "--no-progress", *extra])
    if code != 0:
        raise SystemExit(f"find_duplicates.py {' '.join(extra)} failed")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("sample", "real"), required=True)
    parser.add_argument("--data-dir", type=Path, help="set root with Training Data/ and Test Data/ "
                        "(default: sample -> generated seed 0; real -> data/real)")
    parser.add_argument("--epochs-published", type=int, default=3, help="epochs of the published recipe (default 3)")
    parser.add_argument("--epochs-improved", type=int, default=None, help="default: improved.yaml's entrypoint")
    parser.add_argument("--recipes", nargs="+", choices=tuple(RECIPES), default=list(RECIPES))
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--cache-dir", type=Path, help="feature cache shared between runs (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        workdir = Path(tmp)
        root = args.data_dir or (REPO / "data" / "real" if args.dataset == "real" else None)
        if root is None:
            root = sample_set.write_sample_dataset(workdir / "sample", seed=0)
        test_dir = root / "Test Data"
        cache = args.cache_dir or workdir / "cache"
        improved_epochs = args.epochs_improved or int(
            __import__("yaml").safe_load((REPO / "improved.yaml").read_text())["entrypoint"].split("--epochs")[1])
        results: dict[str, Any] = {"dataset": args.dataset, "root": str(root)}
        checkpoints = {}
        lengths = {"published": args.epochs_published, "improved": improved_epochs}
        for recipe, epochs in ((r, lengths[r]) for r in args.recipes):
            checkpoints[recipe], seconds = train(recipe, root, epochs, workdir, cache)
            results[f"train_seconds_{recipe}"] = round(seconds, 1)
            print(f"trained {recipe} ({epochs} epochs) in {seconds:.0f} s", file=sys.stderr)

        rows: dict[str, dict[str, Any]] = {}
        calibration = {}
        for k, (recipe, checkpoint) in enumerate(checkpoints.items()):
            train_scores = default_model.training_split_scores(checkpoint, root / "Training Data", cache)
            # find_duplicates' default for a model: the best-F1 threshold on the training split (what
            # default_model.py export writes); cosine's is scoring_methods.DEFAULT_THRESHOLDS["cosine"].
            calibration[recipe] = threshold_calibration.best_f1_threshold(train_scores["model"], train_scores["labels"])
            calibration["cosine"] = threshold_calibration.best_f1_threshold(
                train_scores["cosine"], train_scores["labels"]
            )
            model = checkpoint_loading.load_model(checkpoint)
            methods = ["model", *scoring_methods.REFERENCE_METHODS] if k == 0 else ["model"]
            report, unique = evaluation.evaluate(model, test_dir, pairing="unique", methods=methods,
                                                      progress=False, cache_dir=cache)
            labels, left, right = unique["labels"], unique["left"], unique["right"]
            mask = different_shot_mask(unique["paths"], test_dir, labels, left, right)
            for method, scores in unique["scores"].items():
                name = f"SameSpace, {recipe} recipe" if method == "model" else method
                m = report["unique"]["methods"][method]
                default = (
                    calibration[recipe].threshold if method == "model" else scoring_methods.DEFAULT_THRESHOLDS[method]
                )
                rows[name] = {
                    "roc_auc": m["roc_auc"],
                    "ap": m["average_precision"],
                    "best_f1": m["best_f1"]["f1"],
                    "default_threshold": default,
                    "f1_at_default": threshold_calibration.f1_at(scores, labels, default).f1,
                    "ap_different_shots": (
                        float(metrics.average_precision_score(labels[mask], scores[mask]))
                        if mask is not None and labels[mask].any()
                        else None
                    ),
                }
        results["pairs"] = int(len(labels))
        results["positive_pairs"] = int(labels.sum())
        results["different_shot_pairs"] = int(labels[mask].sum()) if mask is not None else None
        results["methods"] = rows
        results["training_split_best_f1"] = {k: {"threshold": c.threshold, "f1": c.f1} for k, c in calibration.items()}
        groups = {"find_duplicates.py (defaults)": pairwise_group_scores(run_find_duplicates(test_dir, workdir, []),
                                                                         test_dir),
                  "find_duplicates.py --method verified": pairwise_group_scores(
                      run_find_duplicates(test_dir, workdir, ["--method", "verified"]), test_dir)}
        results["find_duplicates"] = groups

    print(f"\n{args.dataset}: {test_dir} ({results['pairs']:,} pairs, {results['positive_pairs']} duplicates"
          + (f", {results['different_shot_pairs']} different-shot" if results["different_shot_pairs"] else "") + ")")
    print("| method | ROC-AUC | AP | AP different shots | best F1 | default threshold | F1 at default |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        shots = f"{r['ap_different_shots']:.3f}" if r["ap_different_shots"] is not None else "-"
        print(f"| {name} | {r['roc_auc']:.4f} | {r['ap']:.4f} | {shots} | {r['best_f1']:.3f} | "
              f"{r['default_threshold']:.4f} | {r['f1_at_default']:.3f} |")
    for name, g in results["find_duplicates"].items():
        print(f"\n{name}: {g['groups']} groups, pairwise precision {g['precision']:.3f} recall {g['recall']:.3f} "
              f"F1 {g['f1']:.3f}")
    for name, c in results["training_split_best_f1"].items():
        print(f"best-F1 threshold on the training split: {name} {c['threshold']:.4f} (F1 {c['f1']:.3f})")
    print("training seconds: " + ", ".join(f"{r} {results[f'train_seconds_{r}']}" for r in args.recipes))
    if args.json:
        outputs.atomic_write(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
