"""Prevalence benchmark: the reference methods, with their defaults, on folders where few photos have a duplicate.

    python benchmarks/bench_prevalence.py --dataset sample --json prevalence-sample.json
    python benchmarks/bench_prevalence.py --dataset real --data-dir data/real --json prevalence-real.json

A labelled Test Data split has every photo of every place; a real folder is mostly unique photos. From the split,
samespace.devsets.prevalence draws collections: at share s, every photo of an s-fraction of the places with two
or more photos and ONE photo of each other place (share 0: no photo has a duplicate), over every place of the
split or over 10 / 100 / 1,000 places (those below the split's count of places). Each collection is written as
symlinks and searched by the finder (samespace.finder.find_duplicates) with each method's default threshold
(samespace.scorer_choice.choose_scorer). For each method and collection: the pairwise precision / recall / F1 of
its groups (two photos in one group = predicted duplicates), the AP of the scores the finder's scorer gives every
unique pair of the collection (relative and verified are scored against the collection's own neighbourhoods),
and false pairs per 1,000 photos. Collections other than the whole split are drawn ``--draws`` times (seeds
0..draws-1) and their pair counts pooled; AP is the mean over draws with duplicates. Nothing is tuned.

The distinct dataset is ``samespace devset build-distinct DIR`` (``--data-dir``, default data/distinct): real
photos of distinct places, one photo per place, so every pair a method reports there is a false pair; it is
measured at share 0 only, over every photo once and over 10 / 100 / 1,000 photos ``--draws`` times, and every
false pair is listed with both file names and its score.

The sample dataset is the generated set's Test Data with seed 1 and 30 rooms per room type (120 places, 2-4
photos each): seed 1, so that no room is one of the seed-0 set the defaults were calibrated on, and large
enough for 100-photo duplicate-free collections. 1,000 places need ``--sample-rooms 250`` (about 3,000 photos,
each embedded by three backbone methods: roughly half an hour on 2 cores). The real dataset is the Test Data of
``samespace devset build DIR``, places from its manifest's ``group`` column. Each photo is embedded once per method
(an in-memory embedding store shared by the collections).

Measured 2026-12-05 on 2 cores, 24 GB, no GPU, shared with other jobs (real 103 s, sample 215 s), with the two
commands above: precision / recall / AP at 100, 30 and 10 %, false pairs per 1,000 photos at 0 % (places in
brackets). All rows and pair counts: docs/quality.md "Folders of mostly unique photos".

    real     | 100 %          | 30 %           | 10 %           | 0 % (57) | 0 % (10)
    whash    | 0.16/0.03/0.09 | 0.14/0.04/0.08 | 0.08/0.03/0.05 | 46       | 20
    phash    | 0.96/0.16/0.19 | 1.00/0.17/0.20 | 0.70/0.11/0.12 | 4        | 0
    cosine   | 1.00/0.15/0.93 | 1.00/0.13/0.92 | 1.00/0.08/0.79 | 0        | 0
    relative | 0.91/0.94/0.96 | 0.65/0.95/0.90 | 0.31/0.89/0.70 | 414      | 400
    verified | 0.98/0.92/0.97 | 0.83/0.91/0.94 | 0.51/0.82/0.84 | 189      | 320

    sample   | 100 %          | 30 %           | 10 %           | 0 % (120) | 0 % (100) | 0 % (10)
    whash    | 0.18/0.08/0.05 | 0.19/0.10/0.06 | 0.11/0.08/0.02 | 177       | 176       | 0
    phash    | 0.59/0.20/0.21 | 0.55/0.24/0.23 | 0.30/0.16/0.16 | 107       | 86        | 0
    cosine   | 0.99/0.76/0.85 | 0.96/0.76/0.87 | 0.92/0.78/0.81 | 30        | 26        | 0
    relative | 1.00/0.95/0.98 | 0.78/0.95/0.97 | 0.46/0.91/0.87 | 418       | 454       | 960
    verified | 1.00/0.96/0.99 | 0.94/0.96/0.98 | 0.75/0.97/0.96 | 118       | 104       | 340

The distinct collection (``samespace devset build-distinct``: 119 photos, 28 packages), false pairs per 1,000
photos over the whole collection / 100-photo / 10-photo draws (docs/quality.md "Duplicate-free folders of real
photos"): whash 0 / 0 / 0, phash 8 / 10 / 0, cosine 0 / 0 / 0, relative 647 / 540 / 280, verified 328 / 340 / 220,
calibrated 0 / 0 / 0 (46 s).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from samespace import (  # noqa: E402
    finder,
    grouping,
    labelling,
    matching,
    outputs,
    scorer_choice,
    scoring_methods,
    store_identity,
)
from samespace.devsets import manifests, prevalence, sample_set  # noqa: E402
from samespace.embedding_store import EmbeddingStore  # noqa: E402

SHARES = (1.0, 0.3, 0.1, 0.0)
DUPLICATE_FREE_PLACES = (10, 100, 1000)


def split_labels(dataset: str, split_dir: Path) -> tuple[list[str], np.ndarray]:
    """The split's photos (relative POSIX paths, sorted) and one place label each."""
    paths = labelling.find_images(split_dir)
    files = [p.relative_to(split_dir).as_posix() for p in paths]
    if dataset == "sample":
        return files, labelling.group_ids(paths, split_dir)
    prefix = f"{split_dir.name}/"
    group = {r["path"][len(prefix):]: r["group"] for r in manifests.read_manifest(split_dir.parent)
             if r["path"].startswith(prefix)}
    missing = [f for f in files if f not in group]
    if missing:
        raise SystemExit(f"{split_dir}: {len(missing)} photo(s) not in the manifest, e.g. {missing[0]}")
    ids: dict[str, int] = {}
    return files, np.array([ids.setdefault(group[f], len(ids)) for f in files], np.int64)


def collection_specs(n_places: int, draws: int, shares: tuple[float, ...] = SHARES,
                     with_duplicates: int | None = None) -> list[tuple[float, int | None, int]]:
    """(share, places or None for all, draws) of every collection measured on a split of ``n_places`` places.

    The whole split is drawn once at share 1, and at every share when no place has duplicates
    (``with_duplicates`` 0: every draw would be the same folder)."""
    specs = [(share, None, 1 if share == 1.0 or with_duplicates == 0 else draws) for share in shares]
    return specs + [(0.0, p, draws) for p in DUPLICATE_FREE_PLACES if p < n_places and 0.0 in shares]


class Method:
    """One method with its default threshold; a fresh scorer per collection, embeddings kept across them."""

    def __init__(self, name: str) -> None:
        self.prototype, self.threshold, _ = scorer_choice.choose_scorer(name)
        self.store = EmbeddingStore(store_identity.scorer_fingerprint(self.prototype), self.prototype.name,
                                    self.prototype.fields)

    def measure(self, folder: Path, collection: prevalence.Collection) -> dict[str, Any]:
        """Pair counts of the finder's groups on ``folder`` against the collection's labels, and the AP."""
        scorer = copy.deepcopy(self.prototype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = finder.find_duplicates([folder], scorer, self.threshold, progress=False, store=self.store)
        label_of = dict(zip(collection.files, collection.labels.tolist(), strict=True))
        labels = np.array([label_of[Path(p).relative_to(folder).as_posix()] for p in result.paths])
        n = len(labels)
        left, right = matching.upper_pairs(0, n, n)
        truth = labels[left] == labels[right]
        predicted = grouping.same_group(n, result.groups, left, right)
        scored = right < len(scorer)  # blank photos (after the scored ones) have no score
        ap = None
        if truth[scored].any():
            scores = scorer.score(left[scored], right[scored])
            ap = float(metrics.average_precision_score(truth[scored], scores))
        false = np.flatnonzero(predicted & ~truth)
        false_scores = scorer.score(left[false], right[false]) if len(false) and scored[false].all() else None
        false_pairs = [[Path(result.paths[left[k]]).relative_to(folder).as_posix(),
                        Path(result.paths[right[k]]).relative_to(folder).as_posix(),
                        None if false_scores is None else round(float(false_scores[i]), 4)]
                       for i, k in enumerate(false)]
        return {"photos": n, "true_pairs": int(truth.sum()), "tp": int((predicted & truth).sum()),
                "fp": int((predicted & ~truth).sum()), "fn": int((~predicted & truth).sum()), "ap": ap,
                "groups": len(result.groups), "false_pair_files": false_pairs, "seconds": result.summary.get("seconds")}


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Precision / recall / F1 from the pair counts summed over draws; AP the mean over draws with duplicates."""
    tp, fp, fn, photos = (sum(r[k] for r in runs) for k in ("tp", "fp", "fn", "photos"))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fn else None
    aps = [r["ap"] for r in runs if r["ap"] is not None]
    return {"draws": len(runs), "photos_per_draw": photos / len(runs), "true_pairs_per_draw": (tp + fn) / len(runs),
            "precision": precision, "recall": recall, "f1": f1, "ap": float(np.mean(aps)) if aps else None,
            "false_pairs": fp, "false_pairs_per_1000_photos": 1000 * fp / photos,
            "groups_reported": sum(r["groups"] for r in runs), "runs": runs}


def run(dataset: str, split_dir: Path, methods: list[str], draws: int, workdir: Path,
        shares: tuple[float, ...] = SHARES) -> dict[str, Any]:
    files, labels = split_labels(dataset, split_dir)
    n_places = len(np.unique(labels))
    with_duplicates = int(sum(np.bincount(labels) > 1))
    specs = collection_specs(n_places, draws, shares, with_duplicates)
    drawn = {(share, places): [prevalence.choose(files, labels, share, places, seed) for seed in range(k)]
             for share, places, k in specs}
    folders: dict[tuple[float, int | None, int], Path] = {}
    for (share, places), collections in drawn.items():
        for c in collections:
            folders[share, places, c.seed] = prevalence.write(c, split_dir, workdir / f"s{share}-p{places}-{c.seed}")
    rows = []
    for name in methods:
        start = time.perf_counter()
        method = Method(name)
        for (share, places), collections in drawn.items():
            runs = [method.measure(folders[share, places, c.seed], c) for c in collections]
            rows.append({"method": name, "threshold": method.threshold, "share": share,
                         "places": places or n_places, **pooled(runs)})
        print(f"{dataset}: {name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return {"dataset": dataset, "split": str(split_dir), "photos": len(files), "places": n_places,
            "places_with_duplicates": with_duplicates, "rows": rows}


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['dataset']}: {result['split']} ({result['photos']} photos, {result['places']} places, "
             f"{result['places_with_duplicates']} with duplicates)",
             "| method | share | places | photos | true pairs | draws | precision | recall | F1 | AP | false pairs "
             "| false pairs / 1,000 photos | groups reported |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['share']:.0%} | {r['places']} | {r['photos_per_draw']:.0f} | "
                     f"{r['true_pairs_per_draw']:.0f} | {r['draws']} | {_f(r['precision'])} | {_f(r['recall'])} | "
                     f"{_f(r['f1'])} | {_f(r['ap'])} | {r['false_pairs']} | {r['false_pairs_per_1000_photos']:.1f} | "
                     f"{r['groups_reported']} |")
    return "\n".join(lines)


def false_pairs(result: dict[str, Any], share: float = 0.0) -> str:
    """Every false pair reported at ``share`` (duplicate-free collections by default): method, places, seed,
    both files and the score, each distinct pair of files once per method."""
    lines, seen = [], set()
    for r in result["rows"]:
        if r["share"] != share:
            continue
        for seed, run in enumerate(r["runs"]):
            for a, b, score in run["false_pair_files"]:
                if (r["method"], a, b) not in seen:
                    seen.add((r["method"], a, b))
                    lines.append(f"{r['method']} (places {r['places']}, draw {seed}): {a}  {b}  score {score}")
    return "\n".join(lines) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("sample", "real", "distinct"), required=True)
    parser.add_argument("--data-dir", type=Path,
                        help="real / distinct: the set root (default data/real, data/distinct)")
    parser.add_argument("--sample-seed", type=int, default=1, help="sample: generator seed (default 1)")
    parser.add_argument("--sample-rooms", type=int, default=30, help="sample: rooms per room type (default 30)")
    parser.add_argument("--methods", nargs="+", choices=scoring_methods.REFERENCE_METHODS,
                        default=list(scoring_methods.REFERENCE_METHODS))
    parser.add_argument("--draws", type=int, default=5, help="draws of each thinned collection (default 5)")
    parser.add_argument("--shares", nargs="+", type=float,
                        help="shares of places with duplicates (default 1 0.3 0.1 0, distinct: 0; 0 adds the "
                        "10 / 100 / 1,000-place duplicate-free collections)")
    parser.add_argument("--split", default="Test Data",
                        help="the split drawn from (default 'Test Data'; 'Training Data' checks a change where "
                        "the defaults were fitted, before the test split is scored once)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-prevalence-") as tmp:
        workdir = Path(tmp)
        if args.dataset == "sample":
            root = sample_set.write_sample_dataset(workdir / "sample", seed=args.sample_seed,
                                                   rooms={"Test Data": args.sample_rooms})
        else:
            root = args.data_dir or REPO / "data" / args.dataset
        shares = args.shares or ([0.0] if args.dataset == "distinct" else list(SHARES))
        result = run(args.dataset, root / args.split, args.methods, args.draws, workdir / "collections",
                     tuple(shares))
    result["seconds"] = round(time.perf_counter() - start, 1)
    if args.dataset == "sample":
        result.update(sample_seed=args.sample_seed, sample_rooms=args.sample_rooms)
    print(table(result))
    print("false pairs in duplicate-free collections:")
    print(false_pairs(result))
    print(f"{result['seconds']:.0f} s")
    if args.json:
        outputs.atomic_write(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
