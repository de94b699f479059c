"""Keypoints beyond memory: a calibrated run's keypoints held in memory against kept in the scratch file, side by side.

    python benchmarks/bench_keypoint_table.py [--photos 30000] [--pairs 20000] [--repeat 1]

Each mode runs in its own process (so that peak memory is its own), alternating: ``memory`` keeps every photo's
keypoints in memory (a budget larger than the run), ``scratch`` keeps none there (budget 0: every record goes to
the scratch file, memory-mapped). Both feed a ``calibrated`` scorer as ``samespace find`` does from a store:
batches of ``finder.FROM_STORE_BATCH`` rows of 1280-d unit vectors and packed keypoints (synthetic: random
descriptors, 377 keypoints a photo on average as on the real training split; random descriptors find few matches,
so RANSAC is cheap and the time is the matcher's and the table's; every odd photo is a copy of the one before, moved
3 pixels). Then ``--pairs`` pairs are verified with ``scorer.match``: half of them copies, half photos far apart in
the table (the page cache's worst case); the two modes must count the same inliers.

Prints, per mode: seconds to add the rows, ms a verified pair, the process's peak resident memory (which counts the
scratch file's pages while they are mapped and cached), its anonymous memory (what the process itself holds and
cannot give back: sampled after each batch and after verifying), and the scratch file's size; then scratch / memory.

"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rss import peak_rss_bytes  # noqa: E402

from samespace import finder, keypoint_table, scorer_choice, verification  # noqa: E402

MEAN_KEYPOINTS = 377  # the real training split's mean (docs/scale.md, "Spatial verification's cost")


def anonymous_bytes() -> int:
    """This process's anonymous resident memory now (``RssAnon`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def batch(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    k = verification.MAX_KEYPOINTS
    vectors = rng.standard_normal((n, 1280), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    count = rng.integers(2 * MEAN_KEYPOINTS - k, k + 1, n).astype(np.int32)  # mean MEAN_KEYPOINTS
    xy = rng.uniform(0, 256, (n, k, 2)).astype(np.float32)
    descriptors = rng.integers(0, 256, (n, k, 128), dtype=np.uint8)
    descriptors[np.arange(k)[None, :] >= count[:, None]] = 0
    xy[np.arange(k)[None, :] >= count[:, None]] = 0
    # Every odd photo is its even neighbour moved 3 pixels (a copy whose keypoints all match)
    odd = np.arange(1, n, 2)
    count[odd], descriptors[odd], xy[odd] = count[odd - 1], descriptors[odd - 1], xy[odd - 1] + 3.0
    return {"vectors": vectors, "keypoint_count": count, "keypoint_xy": xy, "keypoint_descriptors": descriptors}


def run_mode(mode: str, photos: int, pairs: int) -> dict[str, float]:
    budget = photos + 1 if mode == "memory" else 0
    keypoint_table.default_in_memory = lambda *_: budget  # the one setting that differs between the modes
    scorer = scorer_choice.choose_scorer("calibrated")[0]
    rng = np.random.default_rng(0)
    anon = anonymous_bytes()
    t = time.perf_counter()
    for start in range(0, photos, finder.FROM_STORE_BATCH):
        scorer.add_embeddings(batch(rng, min(finder.FROM_STORE_BATCH, photos - start)))
        anon = max(anon, anonymous_bytes())
    scorer.finish()
    added = time.perf_counter() - t
    table = scorer.keypoints
    assert isinstance(table, keypoint_table.KeypointTable) and table.spilled == (mode == "scratch")
    left = np.random.default_rng(1).integers(0, photos // 2, pairs) * 2
    right = np.where(np.arange(pairs) % 2, left + 1, (left + photos // 2 + 1) % photos)  # copies; far in the table
    t = time.perf_counter()
    inliers = sum(scorer.match(int(i), int(j)).inliers for i, j in zip(left, right, strict=True))
    per_pair = (time.perf_counter() - t) / pairs
    anon = max(anon, anonymous_bytes())
    return {"add_s": added, "pair_ms": 1e3 * per_pair, "peak_gb": peak_rss_bytes() / 1e9, "anon_gb": anon / 1e9,
            "scratch_gb": (len(table) * table.dtype.itemsize / 1e9) if table.spilled else 0.0, "inliers": inliers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=30_000)
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--mode", choices=["memory", "scratch"], help=argparse.SUPPRESS)  # one run, in a child
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.photos, args.pairs)))
        return
    results: dict[str, list[dict[str, float]]] = {"memory": [], "scratch": []}
    for _ in range(args.repeat):
        for mode in results:
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--photos", str(args.photos),
                                  "--pairs", str(args.pairs)], check=True, capture_output=True, text=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.photos:,} photos ({args.photos * keypoint_table.record_dtype().itemsize / 1e9:.2f} GB of packed "
          f"keypoints), {args.pairs:,} pairs verified; best of {args.repeat}")
    print(f"{'mode':>8} {'add s':>7} {'ms/pair':>8} {'peak GB':>8} {'anon GB':>8} {'scratch GB':>10}")
    best = {}
    for mode, runs in results.items():
        assert len({r["inliers"] for r in runs}) == 1
        best[mode] = {key: min(r[key] for r in runs) for key in runs[0]}
        b = best[mode]
        print(f"{mode:>8} {b['add_s']:7.1f} {b['pair_ms']:8.3f} {b['peak_gb']:8.2f} {b['anon_gb']:8.2f} "
              f"{b['scratch_gb']:10.2f}")
    assert best["memory"]["inliers"] == best["scratch"]["inliers"], "the two modes verified differently"
    ratios = {key: best["scratch"][key] / best["memory"][key] for key in ("add_s", "pair_ms", "peak_gb", "anon_gb")}
    print("scratch / memory: " + ", ".join(f"{key} {value:.2f}" for key, value in ratios.items())
          + f"; same inliers: {int(best['memory']['inliers'])}")


if __name__ == "__main__":
    main()
