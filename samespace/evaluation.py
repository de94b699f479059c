"""Evaluating a checkpoint on one labelled split, beside the reference methods.

- ``faithful`` reproduces the published evaluation: upsampled positives and hash-sampled negatives
  (balanced, self-pairs included), BCE and accuracy of the model.
- ``unique`` is the honest one: every unordered pair of distinct images once, natural class balance, no
  augmentation. ROC-AUC, average precision, precision / recall / F1 at the method's default threshold and at
  the best-F1 threshold, for the model and for the reference methods on the same pairs.

The split is labelled and preprocessed exactly as in training; the frozen backbone runs once per image and
variant, never per pair. write_threshold stores the model's best-F1 threshold (unique pairs) in
``<checkpoint>/samespace_threshold.json``, which the finder uses as its default; only from a split with both
classes and at least scoring_methods.MIN_CALIBRATION_PAIRS pairs of each.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics
from tqdm import tqdm

from samespace import (
    checkpoint_loading,
    decoding,
    hashing,
    labelling,
    model_scorer,
    outputs,
    pair_sampling,
    preprocess,
    reference_scoring,
    scorers,
    scoring_methods,
    threshold_calibration,
)

PLOT_FILES = ("roc.png", "precision_recall.png")


class EvaluationError(ValueError):
    """An evaluation that cannot run (bad checkpoint, bad data directory), naming the path."""


# --------------------------------------------------------------------------------------------
# Metrics (scikit-learn)
# --------------------------------------------------------------------------------------------


def faithful_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """BCE-with-logits (the training loss) and accuracy at sigmoid > 0.5 (logit > 0)."""
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.float64)
    )
    return {"loss": float(loss), "accuracy": float(metrics.accuracy_score(labels, logits > 0))}


def default_threshold(method: str) -> float:
    """The threshold a method is used at without one given: the model's 0.5 (a probability; find_duplicates
    reads the checkpoint's best-F1 file once --write-threshold has made it), else scoring_methods.DEFAULT_THRESHOLDS."""
    return scoring_methods.MODEL_DEFAULT_THRESHOLD if method == "model" else scoring_methods.DEFAULT_THRESHOLDS[method]


def ranking_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """ROC-AUC, average precision, the operating point at the method's default ``threshold`` and the best-F1 one."""
    return {
        "roc_auc": float(metrics.roc_auc_score(labels, scores)),
        "average_precision": float(metrics.average_precision_score(labels, scores)),
        "at_default": asdict(threshold_calibration.f1_at(scores, labels, threshold)),
        "best_f1": asdict(threshold_calibration.best_f1_threshold(scores, labels)),
    }


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def faithful_logits(
    model: torch.nn.Module, features: torch.Tensor, pairs: pair_sampling.PairSet, batch_size: int = 4096,
    device: str = "cpu"
) -> np.ndarray:
    """The model's logit of every pair, each image in its pair's variant (features: N x 8 x D)."""
    from samespace.feature_cache import pair_rows

    out = np.empty(len(pairs), dtype=np.float64)
    table = features.flatten(0, 1)
    rows1, rows2 = (torch.as_tensor(r) for r in pair_rows(pairs))
    for s in range(0, len(pairs), batch_size):
        sl = slice(s, s + batch_size)
        out[sl] = model.logits_from_features(table[rows1[sl]].to(device), table[rows2[sl]].to(device)).double().cpu()
    return out


def unique_scores(
    model: torch.nn.Module | None,
    pooled: torch.Tensor | None,
    images: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    methods: Sequence[str],
    device: str = "cpu",
    progress: bool = False,
    aspects: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Scores of the pairs (left[k], right[k]) by each method; cosine uses the model's own frozen backbone, relative
    and verified their own (scorers.reference_scorer) with the split as the collection; verified uses the photos'
    aspect ratios (decoding.decode_images; square when not given)."""
    out: dict[str, np.ndarray] = {}
    # Their own backbone (Lite0, GeM), run once for all of them; the split is the collection
    own = reference_scoring.reference_scorers([m for m in methods if m in ("relative", "verified", "calibrated")],
                                              images, aspects, device=device, progress=progress)
    for method in tqdm(methods, desc=f"score {len(left):,} pairs", unit="method", disable=not progress):
        if method == "model":
            first, second = model_scorer.model_projections(model, pooled, device)
            out[method] = model_scorer.model_pair_scores(model, first, second, left, right, device=device)
        elif method == "cosine":
            unit = scorers.l2_normalise(pooled)
            out[method] = scorers.cosine_similarity(unit[left], unit[right])
        elif method in own:
            out[method] = own[method].score(left, right)
        else:
            codes = hashing.HASH_FUNCTIONS[method](images)
            out[method] = hashing.hash_similarity(codes[left], codes[right])
    return out


def evaluate(
    model: torch.nn.Module,
    data_dir: str | Path,
    pairing: str = "both",
    methods: Sequence[str] = scoring_methods.METHOD_CHOICES,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate ``model`` on a split directory. Returns (report for JSON, unique pairs and their scores)."""
    from samespace.feature_cache import extract_features

    data_dir = Path(data_dir)
    if batch_size < 1:
        raise EvaluationError(f"batch size {batch_size}: must be positive")
    check_one_split(data_dir)
    folders: list[tuple[Path, str]] = []
    paths = labelling.find_images(data_dir, unreadable=folders)
    if not paths:
        raise EvaluationError(f"{data_dir}: no images found")
    images, aspects, kept, skipped = decoding.decode_images(paths, progress=progress)
    skipped += decoding.skipped_folders(folders)
    paths = [paths[k] for k in kept]
    groups = labelling.group_ids(paths, data_dir)
    _check_classes(data_dir, *pair_sampling.count_pairs(groups, "unique"))
    variants = range(preprocess.N_VARIANTS) if pairing in ("faithful", "both") else (0,)
    features = extract_features(
        model.features, images, variants, batch_size=batch_size, device=device, progress=progress, cache_dir=cache_dir
    ).float()
    report: dict[str, Any] = {"data_dir": str(data_dir), "images": len(paths), "skipped": skipped}

    if pairing in ("faithful", "both"):
        hashes = hashing.whash_codes(images)
        pairs = pair_sampling.build_pairs(groups, hashes, pairing="faithful", balanced=True, seed=0)
        logits = faithful_logits(model, features, pairs, device=device)
        report["faithful"] = {
            "pairs": len(pairs),
            "positive_pairs": int(pairs.label.sum()),
            **faithful_metrics(logits, pairs.label),
        }

    unique: dict[str, Any] = {}
    if pairing in ("unique", "both"):
        left, right = np.triu_indices(len(paths), k=1)
        labels = (groups[left] == groups[right]).astype(np.uint8)
        scores = unique_scores(model, features[:, 0], images, left, right, methods, device, progress, aspects)
        report["unique"] = {
            "pairs": len(left),
            "positive_pairs": int(labels.sum()),
            "methods": {m: ranking_metrics(labels, s, default_threshold(m)) for m, s in scores.items()},
        }
        unique = {"paths": paths, "left": left, "right": right, "labels": labels, "scores": scores}
    return report, unique


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    """The report as a readable text table, the method column as wide as its longest name (``calibrated``)."""
    lines = [f"{report['data_dir']}: {report['images']} images, {len(report['skipped'])} skipped"]
    if "faithful" in report:
        f = report["faithful"]
        lines += [
            "",
            f"faithful (published protocol): {f['pairs']:,} pairs, {f['positive_pairs']:,} positive",
            f"  model   BCE {f['loss']:.4f}   accuracy {f['accuracy']:.4f}",
        ]
    if "unique" in report:
        u = report["unique"]
        width = max(8, *(len(name) for name in u["methods"]))  # 8: the width every name had before calibrated
        lines += [
            "",
            f"unique (every pair once): {u['pairs']:,} pairs, {u['positive_pairs']:,} positive",
            f"  {'method':<{width}} {'ROC-AUC':>7} {'AP':>6} | {'default':>7} {'P':>6} {'R':>6} {'F1':>6} "
            f"| {'best-F1 thr':>11} {'P':>6} {'R':>6} {'F1':>6}",
        ]
        for name, m in u["methods"].items():
            a, b = m["at_default"], m["best_f1"]
            lines.append(
                f"  {name:<{width}} {m['roc_auc']:>7.4f} {m['average_precision']:>6.4f} | {a['threshold']:>7.4f} "
                f"{a['precision']:>6.3f} "
                f"{a['recall']:>6.3f} {a['f1']:>6.3f} | {b['threshold']:>11.4f} {b['precision']:>6.3f} "
                f"{b['recall']:>6.3f} {b['f1']:>6.3f}"
            )
    return "\n".join(lines)


def scores_csv(unique: dict[str, Any], data_dir: Path) -> str:
    """``image1,image2,label,<one score column per method>`` for every unique pair (paths relative to data_dir)."""
    names = [p.relative_to(data_dir).as_posix() for p in unique["paths"]]
    methods = list(unique["scores"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image1", "image2", "label", *methods])
    columns = [unique["scores"][m] for m in methods]
    for k, (i, j) in enumerate(zip(unique["left"], unique["right"], strict=True)):
        writer.writerow([outputs.csv_cell(names[i]), outputs.csv_cell(names[j]), int(unique["labels"][k]),
                         *(f"{c[k]:.6f}" for c in columns)])
    return buffer.getvalue()


def save_plots(unique: dict[str, Any], out_dir: Path) -> list[Path]:
    """ROC and precision-recall curves of every method, as roc.png and precision_recall.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = unique["labels"]
    written = []
    for kind in ("roc", "precision_recall"):
        fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
        for name, s in unique["scores"].items():
            if kind == "roc":
                metrics.RocCurveDisplay.from_predictions(labels, s, name=name, ax=ax)
            else:
                metrics.PrecisionRecallDisplay.from_predictions(labels, s, name=name, ax=ax)
        ax.set_title("ROC, unique pairs" if kind == "roc" else "Precision-recall, unique pairs")
        ax.grid(alpha=0.3)
        path = out_dir / f"{kind}.png"
        outputs.atomic_write(path, lambda f, fig=fig: fig.savefig(
            f, format="png", metadata={"Software": f"{outputs.GENERATOR} model_inference.py"}))
        plt.close(fig)
        written.append(path)
    return written


def check_split(data_dir: Path, write_threshold: bool = False) -> None:
    """Before decoding, from the file names: the split has both classes (and, for --write-threshold, enough pairs).

    evaluate() checks again on the images that decode.
    """
    check_one_split(data_dir)
    with warnings.catch_warnings():  # evaluate() reports unparsed names; counting here stays quiet
        warnings.simplefilter("ignore")
        paths = labelling.find_images(data_dir)
        if not paths:
            raise EvaluationError(f"{data_dir}: no images found")
        positives, negatives = pair_sampling.count_pairs(labelling.group_ids(paths, data_dir), "unique")
    _check_classes(data_dir, positives, negatives)
    if write_threshold:
        check_calibration_size(data_dir, positives, negatives)


def check_one_split(data_dir: Path) -> None:
    """Refuse a dataset root (the folder holding the split folders): scoring its photos would mix the training
    split into the metrics, and --write-threshold would calibrate on photos the model was trained on."""
    splits = [split for split in labelling.SPLITS if (data_dir / split).is_dir()]
    if splits:
        test_split = labelling.SPLITS[-1]  # "Test Data"
        suggested = data_dir / (test_split if test_split in splits else splits[0])
        raise EvaluationError(
            f"{data_dir}: holds the dataset's split folders ({', '.join(repr(s) for s in splits)}); evaluate one "
            f"split, e.g. '{suggested}'"
        )


def _check_classes(data_dir: str | Path, positives: int, negatives: int) -> None:
    if positives == 0:
        raise EvaluationError(f"{data_dir}: no duplicate pairs (no two images share folder, city and room_id)")
    if negatives == 0:
        raise EvaluationError(
            f"{data_dir}: no non-duplicate pairs (every image is of one room); evaluation needs both classes"
        )


def check_calibration_size(data_dir: str | Path, positives: int, negatives: int) -> None:
    """EvaluationError unless the split has scoring_methods.MIN_CALIBRATION_PAIRS duplicate and non-duplicate unique
    pairs."""
    if min(positives, negatives) < scoring_methods.MIN_CALIBRATION_PAIRS:
        raise EvaluationError(
            f"{data_dir}: {positives} duplicate and {negatives} non-duplicate pairs; --write-threshold needs at "
            f"least {scoring_methods.MIN_CALIBRATION_PAIRS} of each"
        )


def write_threshold(checkpoint_dir: Path, report: dict[str, Any]) -> tuple[Path, str | None]:
    """Store the model's best-F1 threshold (unique pairs) with the checkpoint, for find_duplicates.py.

    Refuses (EvaluationError) a split with fewer than scoring_methods.MIN_CALIBRATION_PAIRS duplicate or
    non-duplicate pairs.
    Returns the file and, when it replaced a threshold calibrated on another folder, a line saying so.
    """
    unique = report["unique"]
    check_calibration_size(report["data_dir"], unique["positive_pairs"], unique["pairs"] - unique["positive_pairs"])
    best = unique["methods"]["model"]["best_f1"]
    path = checkpoint_dir / scoring_methods.THRESHOLD_FILE
    replaced = None
    if path.is_file():
        try:
            old = checkpoint_loading.read_threshold(checkpoint_dir)  # a JSON object with a threshold in [0, 1]
            previous = json.loads(path.read_text())
        except (ValueError, OSError):  # CheckpointError is a ValueError
            replaced = f"replaced an invalid threshold file {path}"
        else:
            if old is not None and previous.get("data_dir") != report["data_dir"]:
                replaced = (
                    f"replaced threshold {old:.4f} calibrated on {previous.get('data_dir')} "
                    f"({previous.get('pairs')} pairs) with {best['threshold']:.4f} from {report['data_dir']}"
                )
    document = {
        "threshold": best["threshold"],
        "metric": "best_f1",
        "precision": best["precision"],
        "recall": best["recall"],
        "f1": best["f1"],
        "data_dir": report["data_dir"],
        "pairs": report["unique"]["pairs"],
        "note": "Best-F1 threshold of the model's symmetric score on every unique pair of data_dir "
        "(written by model_inference.py; find_duplicates.py --checkpoint uses it by default).",
    }
    outputs.atomic_write(path, json.dumps(document, indent=2) + "\n")
    return path, replaced
