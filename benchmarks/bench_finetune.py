"""Fine-tuning benchmark: does training Lite0's last blocks on the training places help the calibrated score?

    python benchmarks/bench_finetune.py --data-dir data/real --json finetune.json   # about 20 min on 2 cores

The real-photo set's ``Training Data`` is split into two folds of places (seeded). For each fold, a copy of the
GeM-pooled EfficientNet-Lite0 has its last :data:`UNFROZEN_BLOCKS` blocks and its head convolution trained on that
fold's places (BatchNorm statistics frozen) with a symmetric InfoNCE loss: each batch holds :data:`PLACES` places,
half drawn at random and half the places most alike to them (hard negatives by the frozen features), two photos of
each place (or one photo twice when the place has one), each view cropped, turned, put in perspective, recoloured
and blurred at random. Every photo is then embedded by the model of the *other* fold, so that no figure comes from a
place the model saw. Side by side, out of fold:

- per fold: the plain cosine's AP, and the AP of the cosine minus the photos' mean similarity to a background of
  one photo per place of the training fold (the calibrated score's ``b``), over all pairs and on the different shots;
- the calibrated score (cosine, background, inlier evidence; inliers from the shipped SIFT keypoints), its logistic
  model fitted on one fold's pairs and scoring the other's, with the shipped vectors, with the fine-tuned ones, and
  with both (five features): AP, AP of the different shots, mean group F1 over collections thinned to 100 / 30 /
  10 % of places with duplicates at the shipped threshold and at the best of the grid, and the different shots
  grouped.

Only the training split is read: the Test Data stays a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from samespace import (  # noqa: E402
    backbones,
    background,
    calibrated_fit,
    calibrated_score,
    decoding,
    grouping,
    labelling,
    matching,
    preprocess,
    scoring_methods,
)

STEPS = 300
UNFROZEN_BLOCKS = 4  # of Lite0's 16, plus its head convolution: 2.4 M of its 3.4 M weights
LEARNING_RATE = 3e-5
PLACES = 12  # per batch: 24 views
CROP = 224
TEMPERATURE = 0.05
EMBED_BATCH = 64
Pairs = dict[str, np.ndarray]


def augmentation() -> torch.nn.Module:
    """A random view of a photo: what a re-shoot or an edit does to it."""
    from torchvision.transforms import v2 as T

    return T.Compose([T.RandomResizedCrop(CROP, scale=(0.35, 1.0), ratio=(0.6, 1.6), antialias=True),
                      T.RandomHorizontalFlip(), T.RandomApply([T.RandomRotation(15)], p=0.3),
                      T.RandomPerspective(0.2, p=0.3), T.ColorJitter(0.4, 0.4, 0.3, 0.03),
                      T.RandomApply([T.GaussianBlur(5, (0.1, 1.5))], p=0.2)])


def embed(body: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> unit vectors, as backbones.FrozenFeatureExtractor computes them (gradients kept)."""
    x = preprocess.normalise(x, "efficientnet_lite0").contiguous(memory_format=torch.channels_last)
    return F.normalize(body(x).flatten(1), dim=1)


def embed_all(body: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([embed(body, preprocess.to_model_input(images[k:k + EMBED_BATCH]))
                          for k in range(0, len(images), EMBED_BATCH)]).numpy()


def fine_tune(images: np.ndarray, places: np.ndarray, seed: int) -> tuple[torch.nn.Module, float]:
    """Lite0 (GeM) with its last blocks trained on ``images`` of ``places``; and the seconds it took."""
    torch.manual_seed(seed)
    body = backbones.build_feature_extractor("efficientnet_lite0", "imagenet", "gem").body
    net = body.net
    trained = [p for m in [*list(net._blocks)[-UNFROZEN_BLOCKS:], net._conv_head] for p in m.parameters()]
    for p in trained:
        p.requires_grad_(True)
    names, place_of = np.unique(places, return_inverse=True)
    members = [np.flatnonzero(place_of == k) for k in range(len(names))]
    frozen = embed_all(body, images)
    alike = frozen @ frozen.T
    alike[place_of[:, None] == place_of[None, :]] = -1.0
    hardest = [int(place_of[np.argmax(alike[m].max(0))]) for m in members]  # the most alike other place
    optimiser = torch.optim.AdamW(trained, lr=LEARNING_RATE, weight_decay=1e-4)
    views, rng, start = augmentation(), np.random.default_rng(seed), time.perf_counter()
    for _ in range(STEPS):
        chosen = [int(c) for c in rng.choice(len(names), PLACES // 2, replace=False)]
        chosen += [h for h in dict.fromkeys(hardest[c] for c in chosen) if h not in chosen]
        while len(chosen) < PLACES:
            c = int(rng.integers(len(names)))
            chosen += [] if c in chosen else [c]
        firsts, seconds = [], []
        for c in chosen[:PLACES]:
            a, b = rng.choice(members[c], 2, replace=False) if len(members[c]) > 1 else (members[c][0],) * 2
            firsts.append(views(preprocess.to_model_input(images[a])))
            seconds.append(views(preprocess.to_model_input(images[b])))
        z = embed(body, torch.stack(firsts + seconds))
        logits = (z @ z.T / TEMPERATURE).fill_diagonal_(-1e9)
        target = torch.cat([torch.arange(PLACES, 2 * PLACES), torch.arange(PLACES)])
        loss = F.cross_entropy(logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return body.eval(), time.perf_counter() - start


def fold_pairs(vectors: np.ndarray, index: np.ndarray, labels: np.ndarray, shots: np.ndarray,
               bank_rows: np.ndarray, keypoints: list) -> Pairs:
    """calibrated_fit.pair_features of the photos ``index`` (the background: ``bank_rows``), with the inlier
    evidence and which pairs are different shots of one place."""
    split = calibrated_fit.SplitFeatures("real", vectors[index], [keypoints[i] for i in index], labels[index])
    pairs = calibrated_fit.pair_features(split, vectors[bank_rows], [f"real:{label}" for label in labels[bank_rows]])
    pairs["evidence"] = calibrated_score.evidence(pairs["inliers"])
    pairs["different_shot"] = pairs["same"] & (shots[index][pairs["left"]] != shots[index][pairs["right"]])
    return pairs


def average_precisions(same: np.ndarray, different_shot: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AP over all pairs, and over the different shots against every unrelated pair."""
    from sklearn.metrics import average_precision_score

    keep = ~same | different_shot
    return (float(average_precision_score(same, scores)),
            float(average_precision_score(different_shot[keep], scores[keep])))


def calibrated_out_of_fold(folds: list[Pairs], labels: list[np.ndarray], columns: list[str]) -> dict[str, Any]:
    """The calibrated score's logistic model on ``columns``, fitted on one fold and scoring the other."""
    from sklearn.linear_model import LogisticRegression

    def x(f: Pairs) -> np.ndarray:
        return np.stack([f[c] for c in columns], 1)

    scores = [LogisticRegression(C=calibrated_fit.C, max_iter=1000).fit(x(other), other["same"]).predict_proba(
        x(this))[:, 1] for this, other in ((folds[0], folds[1]), (folds[1], folds[0]))]
    same = np.concatenate([f["same"] for f in folds])
    shots = np.concatenate([f["different_shot"] for f in folds])
    ap, ap_shots = average_precisions(same, shots, np.concatenate(scores))
    grid = []
    for threshold in calibrated_fit.THRESHOLD_GRID:
        f1, grouped = [], 0
        for f, p, fold_labels in zip(folds, scores, labels, strict=True):
            split = calibrated_fit.SplitFeatures("fold", np.zeros((0, 1)), [], fold_labels)
            f1 += [r["f1"] for r in calibrated_fit.thinned_group_f1(split, p, threshold)]
            groups = grouping.linked_groups(len(fold_labels), f["left"], f["right"], p, threshold)
            together = grouping.same_group(len(fold_labels), groups, f["left"], f["right"])
            grouped += int((together & f["different_shot"]).sum())
        grid.append({"threshold": threshold, "mean_group_f1": float(np.mean(f1)), "different_shots_grouped": grouped})
    return {"ap": ap, "ap_different_shots": ap_shots, "different_shots": int(shots.sum()), "grid": grid}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the real-photo set (samespace devset build)")
    parser.add_argument("--seed", type=int, default=0, help="which places go to which fold, and the training")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    split_dir = args.data_dir / "Training Data"
    paths = labelling.find_images(split_dir)
    images, aspects, kept, _ = decoding.decode_images(paths, progress=False)
    if len(kept) != len(paths):
        raise SystemExit("some training photos could not be decoded: rebuild the set")
    # the shipped vectors, SIFT keypoints and labels, from the photos decoded once for both
    shipped = calibrated_fit.embed_decoded(images, aspects, labelling.group_ids(paths, split_dir), "real")
    shot_of = {r["path"]: r["shot"] for r in csv.DictReader((args.data_dir / "manifest.csv").open())}
    shots = np.array([shot_of[p.relative_to(args.data_dir).as_posix()] for p in paths])
    labels = shipped.labels
    names = np.unique(labels)
    np.random.default_rng(args.seed).shuffle(names)
    fold_of = np.isin(labels, names[: len(names) // 2]).astype(int)  # 1: the first half of the places
    index = [np.flatnonzero(fold_of == k) for k in (0, 1)]
    _, first = np.unique(labels, return_index=True)
    bank_rows = np.sort(first)
    out_of_fold = np.zeros_like(shipped.vectors)
    per_fold, seconds = [], []
    for k in (0, 1):  # train on fold k, embed the other fold
        model, took = fine_tune(images[index[k]], labels[index[k]], args.seed + k)
        seconds.append(took)
        tuned = embed_all(model, images)
        other = index[1 - k]
        out_of_fold[other] = tuned[other]
        row = {"trained_on": int(len(index[k])), "scored": int(len(other)), "seconds": round(took)}
        for name, vectors in (("shipped", shipped.vectors), ("fine-tuned", tuned)):
            bank_train = bank_rows[np.isin(bank_rows, index[k])]  # the background: the training fold's places
            own = labels[bank_train][None, :] == labels[other][:, None]
            b = background.similarity(vectors[other], vectors[bank_train], exclude=own)
            left, right = matching.upper_pairs(0, len(other), len(other))
            cosine = np.einsum("ij,ij->i", vectors[other][left], vectors[other][right])
            same = labels[other][left] == labels[other][right]
            different = same & (shots[other][left] != shots[other][right])
            row[name] = {"ap_cosine": average_precisions(same, different, cosine)[0],
                         "ap_background": average_precisions(same, different, cosine - 0.5 * (b[left] + b[right]))}
        per_fold.append(row)
    fold_labels = [labels[i] for i in index]
    frozen = [fold_pairs(shipped.vectors, i, labels, shots, bank_rows, shipped.keypoints) for i in index]
    tuned = [fold_pairs(out_of_fold, i, labels, shots, bank_rows, shipped.keypoints) for i in index]
    base = ["cosine", "background", "evidence"]
    both = [{**f, "cosine_tuned": t["cosine"], "background_tuned": t["background"]}
            for f, t in zip(frozen, tuned, strict=True)]
    variants = {"shipped vectors": calibrated_out_of_fold(frozen, fold_labels, base),
                "fine-tuned vectors": calibrated_out_of_fold(tuned, fold_labels, base),
                "both (five features)": calibrated_out_of_fold(both, fold_labels,
                                                               [*base, "cosine_tuned", "background_tuned"])}

    print(f"{len(paths)} real training photos, two folds of places (seed {args.seed}); fine-tuning {STEPS} steps, "
          f"{' and '.join(f'{s:.0f}' for s in seconds)} s; {time.perf_counter() - start:.0f} s in all")
    print("| fold scored | photos | cosine AP, shipped / fine-tuned | cosine - background AP | different shots AP |")
    print("| --- | --- | --- | --- | --- |")
    for k, row in enumerate(per_fold):
        s, t = row["shipped"], row["fine-tuned"]
        print(f"| {2 - k} | {row['scored']} | {s['ap_cosine']:.4f} / {t['ap_cosine']:.4f} | "
              f"{s['ap_background'][0]:.4f} / {t['ap_background'][0]:.4f} | "
              f"{s['ap_background'][1]:.3f} / {t['ap_background'][1]:.3f} |")
    shipped_threshold = scoring_methods.CALIBRATED_THRESHOLD
    print("\n| calibrated score, out of fold | AP | AP, different shots | mean group F1 at "
          f"{shipped_threshold} | best (threshold) | different shots grouped at {shipped_threshold} / best |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in variants.items():
        at = next(g for g in r["grid"] if abs(g["threshold"] - shipped_threshold) < 1e-9)
        best = max(r["grid"], key=lambda g: g["mean_group_f1"])
        print(f"| {name} | {r['ap']:.4f} | {r['ap_different_shots']:.3f} | {at['mean_group_f1']:.4f} | "
              f"{best['mean_group_f1']:.4f} ({best['threshold']:.2f}) | {at['different_shots_grouped']} / "
              f"{best['different_shots_grouped']} of {r['different_shots']} |")
    if args.json:
        from samespace import outputs

        outputs.atomic_write(args.json, json.dumps({"per_fold": per_fold, "calibrated": variants}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
