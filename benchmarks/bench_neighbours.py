"""Approximate candidate search (neighbours.py) on synthetic embeddings: recall, and a million vectors.

    python benchmarks/bench_neighbours.py recall [--n 100000]          # recall of the true top-20
    python benchmarks/bench_neighbours.py scale [--sizes 250000 500000 1000000] [--results FILE]
    python benchmarks/bench_neighbours.py report --results FILE         # targets from saved scale results

No photos: embeddings are drawn to look like L2-normalised pooled CNN features (see :func:`synthetic`), with
planted duplicate groups. ``scale`` runs each size in its own process (so peak RSS is its own) and times
what find_duplicates does after embedding: candidate search (approximate, neighbours.knn_pairs), scoring
the candidate pairs with the cosine scorer, and grouping (grouping.linked_groups, as find_duplicates.py).
With ``--results`` each size's figures are appended to a JSON-lines file, so sizes can run one per command (each under
``flock /tmp/samespace-heavy.lock`` on a shared machine) and ``report`` prints the targets from the file.

Targets (PASS/FAIL): recall of the true top-20 >= 0.99 at 100,000 vectors; at 1,000,000: <= 15 min and
<= 8 GB peak RSS, >= 99% of the planted duplicate pairs found; time(1M) / time(250k) <= 1.3 x 4.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DIM = 1280  # efficientnet_lite0's pooled features (find_duplicates' default backbone)
RECALL_TARGET = 0.99
MINUTES_TARGET = 15.0
MEMORY_TARGET_GB = 8.0
PLANTED_TARGET = 0.99
GROWTH_TOLERANCE = 1.3
THRESHOLD = 0.8591  # find_duplicates' default cosine threshold


def synthetic(n: int, dim: int = DIM, seed: int = 0, dtype: type = np.float32,
              duplicate_share: float = 0.1, scene_size: int = 50, spread: float = 0.5,
              alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors like pooled CNN features of a photo collection, and the planted duplicate groups.

    - Deviations are Gaussian with a power-law spectrum (variance of axis i ~ i^-alpha, total T), the shape of
      CNN feature spectra.
    - A shared positive mean of squared norm T/2 (post-ReLU features are all positive), so unrelated photos
      have cosine ~0.5.
    - Photos come in "scenes" (places, subjects) of ``scene_size`` on average: vector = mean + scene centre
      (x 0.5) + ``spread`` (0.5) x a per-photo deviation, so photos of one scene have cosine ~0.75.
    - ``duplicate_share`` of the photos are copies in groups of 2-4 of a base photo: base + 0.1-0.36 x a
      deviation, i.e. cosine ~0.88-0.99 to each other (re-encoded, cropped, edited copies, re-shoots); the
      weakest groups sit near the default threshold (0.8591), and some of their pairs fall below it.

    Returns (vectors (n, dim), group id per row: -1 for photos without a planted duplicate).
    """
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1, dtype=np.float64) ** (-alpha / 2)).astype(np.float32)
    total = float((scale**2).sum())
    mean = np.abs(rng.standard_normal(dim)).astype(np.float32)
    mean *= np.sqrt(0.5 * total) / np.linalg.norm(mean)
    n_scenes = max(1, n // scene_size)
    centres = rng.standard_normal((n_scenes, dim), dtype=np.float32) * (scale * 0.5)
    # duplicate groups at random rows (no permutation afterwards: that would copy all vectors)
    sizes, planted = [], 0
    while planted < duplicate_share * n:
        size = int(rng.integers(2, 5))
        sizes.append(size)
        planted += size
    rows = rng.choice(n, min(planted, n), replace=False)
    groups = np.full(n, -1, np.int64)
    groups[rows] = np.repeat(np.arange(len(sizes)), sizes)[: len(rows)]
    noise = rng.uniform(0.1, 0.36, len(sizes)).astype(np.float32)
    scene_of = rng.integers(0, n_scenes, n)
    out = np.empty((n, dim), dtype)
    base_vectors: dict[int, np.ndarray] = {}
    block = 1 << 15
    for start in range(0, n, block):
        stop = min(start + block, n)
        x = mean + centres[scene_of[start:stop]]
        x += spread * rng.standard_normal((stop - start, dim), dtype=np.float32) * scale
        for r in np.flatnonzero(groups[start:stop] >= 0):
            g = int(groups[start + r])
            if g not in base_vectors:
                base_vectors[g] = x[r].copy()
            x[r] = base_vectors[g]
            x[r] += noise[g] * rng.standard_normal(dim, dtype=np.float32) * scale
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, groups


def planted_pairs(groups: np.ndarray) -> set[tuple[int, int]]:
    """Every unordered pair (i < j) of rows in one planted group."""
    pairs = set()
    order = np.argsort(groups, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(groups[order])) + 1)
    for m in members:
        if groups[m[0]] < 0:
            continue
        m = np.sort(m)
        pairs.update((int(a), int(b)) for i, a in enumerate(m) for b in m[i + 1 :])
    return pairs


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def search_params(n: int, overrides: list[str]) -> Any:
    """neighbours.params_for(n) with ``name=value`` overrides (integers), e.g. ``ef_search=96``."""
    import dataclasses

    import neighbours

    values = {}
    for item in overrides:
        name, _, value = item.partition("=")
        values[name] = int(value)
    return dataclasses.replace(neighbours.params_for(n), **values)


def cmd_recall(args: argparse.Namespace) -> int:
    import neighbours

    t = time.perf_counter()
    vectors, _ = synthetic(args.n)
    print(f"{args.n:,} synthetic {DIM}-d vectors in {time.perf_counter() - t:.1f} s")
    rng = np.random.default_rng(1)
    queries = np.sort(rng.choice(args.n, args.queries, replace=False))
    t = time.perf_counter()
    truth = neighbours.exact_knn(vectors, vectors[queries], args.k + 1)
    exact_s = time.perf_counter() - t
    # drop the query itself, as knn does
    truth = np.array([[j for j in row if j != q][: args.k] for q, row in zip(queries, truth, strict=True)])
    t = time.perf_counter()
    params = search_params(args.n, args.param)
    found = neighbours.knn(vectors, args.k, approximate=True, params=params)
    approx_s = time.perf_counter() - t
    recall = neighbours.recall_at_k(found[queries], truth)
    print(f"approximate search of all {args.n:,} rows (top-{args.k}): {approx_s:.1f} s; exact search of "
          f"{args.queries:,} sampled rows: {exact_s:.1f} s (all rows: ~{exact_s * args.n / args.queries:.0f} s)")
    print(f"parameters: {params}; load average {os.getloadavg()[0]:.1f}")
    verdict = "PASS" if recall >= RECALL_TARGET else "FAIL"
    print(f"{verdict}: recall of the true top-{args.k} on {args.queries:,} sampled rows = {recall:.4f} "
          f"(target >= {RECALL_TARGET})")
    return 0


def run_size(n: int, params: Any) -> dict:
    """One size in this process: generate (not timed), then candidate search + scoring + grouping."""
    import torch

    import grouping
    import neighbours
    import scoring

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t = time.perf_counter()
    vectors, groups = synthetic(n)
    generate_s = time.perf_counter() - t
    rss_data = peak_rss_gb()
    scorer = scoring.CosineScorer(torch.nn.Identity())
    scorer.add_embeddings({"vectors": vectors})
    scorer.finish()
    del vectors
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    pairs = neighbours.knn_pairs(scorer.search_vectors(), scoring.DEFAULT_TOP_K, approximate=True, params=params)
    search_s = time.perf_counter() - t0
    t = time.perf_counter()
    scores = scorer.score(pairs[:, 0], pairs[:, 1])
    keep = scores >= THRESHOLD
    left, right = pairs[keep, 0], pairs[keep, 1]
    score_s = time.perf_counter() - t
    t = time.perf_counter()
    found_groups = grouping.linked_groups(n, left, right, scores[keep], THRESHOLD, score_fn=scorer.score)
    group_s = time.perf_counter() - t
    total = time.perf_counter() - t0
    components = grouping.connected_groups(n, left, right)
    truth = planted_pairs(groups)
    # Planted pairs an exact search would report: exact cosine at or above the threshold (the rest are below it).
    planted = np.array(sorted(truth), np.int64).reshape(-1, 2)
    reachable = planted[scorer.score(planted[:, 0], planted[:, 1]) >= THRESHOLD]
    reachable_set = set(map(tuple, reachable.tolist()))
    found = set(zip(left.tolist(), right.tolist(), strict=True))
    hits = len(truth & found)
    return {
        "n": n, "generate_s": generate_s, "search_s": search_s, "score_s": score_s, "group_s": group_s,
        "total_s": total, "candidate_pairs": len(pairs), "duplicate_pairs": int(keep.sum()),
        "planted_pairs": len(truth), "planted_found": hits, "false_pairs": len(found - truth),
        "planted_above_threshold": len(reachable_set), "planted_above_found": len(reachable_set & found),
        "groups": len(found_groups), "largest_group": max((len(g) for g in found_groups), default=0),
        "largest_component": max((len(c) for c in components), default=0),
        "index": "accurate" if params == neighbours.ACCURATE else "fast" if params == neighbours.FAST else "custom",
        "params": str(params),
        "peak_rss_gb": peak_rss_gb(), "rss_after_generate_gb": rss_data, "load_average_start": load_start,
        "load_average": os.getloadavg(),
    }


def _found_share(r: dict) -> float:
    """Share of the planted pairs at or above the threshold (what exact search would report) that were found."""
    return r["planted_above_found"] / max(r["planted_above_threshold"], 1)


def _line(r: dict) -> str:
    load = f"{r['load_average_start'][0]:.1f}-{r['load_average'][0]:.1f}"
    return (f"{r['n']:>9,} {r['search_s']:>8.1f} {r['score_s']:>7.1f} {r['group_s']:>6.1f} {r['total_s']:>8.1f} "
            f"{r['peak_rss_gb']:>8.2f} {r['candidate_pairs']:>11,} {_found_share(r):>8.2%} "
            f"{r['planted_found'] / r['planted_pairs']:>8.2%} {r['false_pairs']:>7,} {r['largest_group']:>6} "
            f"{r['largest_component']:>6}  {load:>9}  {r['index']}")


HEADER = (f"{'vectors':>9} {'search':>8} {'score':>7} {'group':>6} {'total s':>8} {'peak GB':>8} {'candidates':>11} "
          f"{'found':>8} {'of all':>8} {'false':>7} {'max g':>6} {'max c':>6}  {'load':>9}  index\n"
          "(found: planted pairs at or above the threshold that were found; of all: of every planted pair; "
          "max g / max c: largest group / connected component; load: 1-min load average at start-end)")


def report(results: dict[int, dict]) -> None:
    print(HEADER)
    for n in sorted(results):
        print(_line(results[n]))
    big = results.get(1_000_000)
    if big:
        minutes, gb = big["total_s"] / 60, big["peak_rss_gb"]
        share = _found_share(big)
        print(f"{'PASS' if minutes <= MINUTES_TARGET else 'FAIL'}: 1,000,000 vectors in {minutes:.1f} min "
              f"(target <= {MINUTES_TARGET:g})")
        print(f"{'PASS' if gb <= MEMORY_TARGET_GB else 'FAIL'}: peak RSS {gb:.2f} GB (target <= {MEMORY_TARGET_GB:g}; "
              f"{big['rss_after_generate_gb']:.2f} GB of it holds the generated vectors)")
        print(f"{'PASS' if share >= PLANTED_TARGET else 'FAIL'}: {share:.2%} of the {big['planted_above_threshold']:,} "
              f"planted duplicate pairs at or above the threshold found (target >= {PLANTED_TARGET:.0%}; "
              f"{big['planted_found'] / big['planted_pairs']:.2%} of all {big['planted_pairs']:,} planted pairs, "
              "some of which the generator puts below the threshold)")
    else:
        print("NOT RUN: 1,000,000")
    if 250_000 in results and 1_000_000 in results:
        growth = results[1_000_000]["total_s"] / results[250_000]["total_s"]
        ratio = growth / 4
        print(f"{'PASS' if ratio <= GROWTH_TOLERANCE else 'FAIL'}: time x{growth:.2f} for 4x the vectors: "
              f"{ratio:.2f}x faster than N (target <= {GROWTH_TOLERANCE})")
    else:
        print("NOT RUN: the 250,000 -> 1,000,000 growth target")


def _read_results(path: Path) -> dict[int, dict]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[r["n"]] = r  # the last run of a size wins
    return out


def cmd_scale(args: argparse.Namespace) -> int:
    results = {}
    for n in args.sizes:
        overrides = [f"--param={p}" for p in args.param]
        proc = subprocess.run([sys.executable, __file__, "run-one", str(n), *overrides], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            print(f"{n}: FAILED\n{proc.stderr[-3000:]}")
            return 1
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[n] = r
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps(r) + "\n")
        print(_line(r), flush=True)
    if args.results:
        results = {**_read_results(args.results), **results}
    report(results)
    return 0


PARAM_HELP = "override a neighbours.SearchParams field: name=value (repeatable)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    recall = sub.add_parser("recall")
    recall.add_argument("--param", action="append", default=[], help=PARAM_HELP)
    recall.add_argument("--n", type=int, default=100_000)
    recall.add_argument("--queries", type=int, default=2000, help="rows whose exact top-k is computed")
    recall.add_argument("--k", type=int, default=20)
    scale = sub.add_parser("scale")
    scale.add_argument("--param", action="append", default=[], help=PARAM_HELP)
    scale.add_argument("--sizes", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    scale.add_argument("--results", type=Path, help="append each size's figures (JSON lines) to this file")
    rep = sub.add_parser("report")
    rep.add_argument("--results", type=Path, required=True)
    one = sub.add_parser("run-one")
    one.add_argument("--param", action="append", default=[], help=PARAM_HELP)
    one.add_argument("n", type=int)
    args = parser.parse_args()
    if args.command == "recall":
        return cmd_recall(args)
    if args.command == "scale":
        return cmd_scale(args)
    if args.command == "report":
        report(_read_results(args.results))
        return 0
    print(json.dumps(run_size(args.n, search_params(args.n, args.param))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
