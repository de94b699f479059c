"""Benchmark: pair building + hash-weighted negative sampling, ours against the published approach.

    python benchmarks/bench_pairs.py            # N = 631 (the real training split), 2,000 and 5,000
    python benchmarks/bench_pairs.py --quick    # N = 200 and 500, a few seconds

Inputs per N (seed 0): random 64-bit hashes and group ids with a realistic group-size mix of 1-4 photos per
room (P = 5%, 65%, 20%, 10%: about 2.6 positive pairs per image, the real split has 1,559 / 631 = 2.5).

- ours:  ``pair_sampling.positive_pairs`` + ``pair_sampling.sample_negative_pairs`` with n = 64 x positives, as
  ``pair_sampling.build_pairs`` does (a streamed Efraimidis-Spirakis sample, never N^2 in memory).
- naive: the way the published project did it, for N <= 2,000 only: a pandas DataFrame of all N^2 ordered
  pairs with imagehash ``ImageHash`` objects, a label column, a row-wise ``DataFrame.apply`` computing
  ``hash1 - hash2`` (Hamming distance) per row, weight = exp(-d), then
  ``DataFrame.sample(n, weights=..., random_state=0)`` (without replacement) on the negatives. pandas 3
  refuses that call when n x the largest normalised weight > 1 (always the case here), so the naive code makes
  the call pandas 2 made for it: ``RandomState(0).choice(len, n, replace=False, p=w / w.sum())`` + ``take``.

Every (implementation, N) runs in a fresh subprocess of this script. Time is wall clock of the work only
(imports and input generation excluded; ours: best of 3, naive: one run). Peak memory is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak resident set) at the end minus the current resident set
(psutil) after imports and input generation: the extra memory the work needed at its peak (an upper bound,
as a transient peak during imports also counts).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _rss import peak_rss_mb  # noqa: E402  (benchmarks/ is on sys.path: the scripts run from it)

from samespace import hashing, pair_sampling  # noqa: E402

GROUP_SIZES = (1, 2, 3, 4)
GROUP_SIZE_P = (0.05, 0.65, 0.20, 0.10)
NAIVE_MAX_N = 2_000
TARGET_SPEEDUP, TARGET_SPEEDUP_N = 50.0, 2_000
TARGET_PEAK_MB, TARGET_PEAK_N = 1024.0, 5_000


def make_case(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint64, group ids) for n images; group members are contiguous, as in a sorted folder."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice(GROUP_SIZES, size=n, p=GROUP_SIZE_P)
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n)) + 1]
    groups = np.repeat(np.arange(len(sizes)), sizes)[:n]
    hashes = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    return hashes, groups


def ours(hashes: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive pairs, sampled negative pairs), each (P, 2) image indices."""
    positives = pair_sampling.positive_pairs(groups)
    negatives = pair_sampling.sample_negative_pairs(hashes, groups, pair_sampling.N_PAIR_FLAGS * len(positives), seed=0)
    return positives, negatives


def naive(hashes: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published approach: every ordered pair in a DataFrame, a row-wise Hamming distance, DataFrame.sample."""
    import imagehash
    import pandas as pd

    n = len(hashes)
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(n, 8), axis=1).reshape(n, 8, 8).astype(bool)
    image_hashes = [imagehash.ImageHash(b) for b in bits]
    left, right = np.divmod(np.arange(n * n), n)
    df = pd.DataFrame({"img1": left, "img2": right})
    df["hash1"] = [image_hashes[k] for k in left]
    df["hash2"] = [image_hashes[k] for k in right]
    df["label"] = (groups[left] == groups[right]).astype(int)
    df["dist"] = df.apply(lambda row: row["hash1"] - row["hash2"], axis=1)
    df["weight"] = np.exp(-df["dist"].astype(float))
    positives = df[df["label"] == 1]
    negatives = df[df["label"] == 0]
    # negatives.sample(n, weights="weight", random_state=0) as pandas < 3 ran it for the published code; pandas 3
    # refuses it (n x the largest normalised weight > 1), so make the same call pandas 2 made.
    weights = negatives["weight"].to_numpy()
    rows = np.random.RandomState(0).choice(
        len(negatives), size=pair_sampling.N_PAIR_FLAGS * len(positives), replace=False, p=weights / weights.sum()
    )
    sampled = negatives.take(rows)
    return positives[["img1", "img2"]].to_numpy(), sampled[["img1", "img2"]].to_numpy()




def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def worker(impl: str, n: int) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    hashes, groups = make_case(n)
    func = ours if impl == "ours" else naive
    if impl == "naive":
        import imagehash  # noqa: F401  (imports are not part of the measurement)
        import pandas  # noqa: F401
    baseline = _rss_mb()
    repeats = 3 if impl == "ours" else 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        positives, negatives = func(hashes, groups)
        times.append(time.perf_counter() - start)
    peak = peak_rss_mb() - baseline
    assert np.all(groups[negatives[:, 0]] != groups[negatives[:, 1]])
    assert len(np.unique(negatives, axis=0)) == len(negatives)  # without replacement
    mean_d = float(hashing.hamming(hashes[negatives[:, 0]], hashes[negatives[:, 1]]).mean())
    return {"seconds": min(times), "peak_mb": peak, "positives": len(positives), "negatives": len(negatives),
            "mean_d": mean_d}


def measure(impl: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", impl, str(n)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run: N = 200 and 500")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return 0

    sizes = (200, 500) if args.quick else (631, 2_000, 5_000)
    print("pair building + weighted negative sampling (n = 64 x positives); seed 0, random hashes, groups of 1-4")
    print("time: wall clock of the work (ours best of 3, naive 1 run); peak MB: ru_maxrss at the end minus RSS")
    print("after imports and inputs (psutil), each (implementation, N) in a fresh subprocess;")
    print("mean d: mean Hamming distance of the sampled negatives (population mean: 32)\n")
    header = (f"{'N':>6} {'positives':>10} {'negatives':>10} {'ours s':>9} {'ours MB':>8} "
              f"{'naive s':>9} {'naive MB':>9} {'speedup':>9} {'mean d ours/naive':>18}")
    print(header)
    print("-" * len(header))
    results: dict[int, tuple[dict[str, float], dict[str, float] | None]] = {}
    for n in sizes:
        mine = measure("ours", n)
        ref = measure("naive", n) if n <= NAIVE_MAX_N else None
        if ref is not None:
            assert (ref["positives"], ref["negatives"]) == (mine["positives"], mine["negatives"]), (ref, mine)
        results[n] = (mine, ref)
        naive_s = f"{ref['seconds']:9.2f}" if ref else f"{'-':>9}"
        naive_mb = f"{ref['peak_mb']:9.1f}" if ref else f"{'-':>9}"
        speedup = f"{ref['seconds'] / mine['seconds']:8.0f}x" if ref else f"{'-':>9}"
        mean_d = f"{mine['mean_d']:.2f} / " + (f"{ref['mean_d']:.2f}" if ref else "-")
        print(f"{n:>6,} {mine['positives']:>10,} {mine['negatives']:>10,} {mine['seconds']:9.3f} "
              f"{mine['peak_mb']:8.1f} {naive_s} {naive_mb} {speedup} {mean_d:>18}", flush=True)

    print()
    ok = True
    if TARGET_SPEEDUP_N in results and results[TARGET_SPEEDUP_N][1] is not None:
        mine, ref = results[TARGET_SPEEDUP_N]
        speedup = ref["seconds"] / mine["seconds"]
        passed = speedup >= TARGET_SPEEDUP
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}: >= {TARGET_SPEEDUP:.0f}x faster than naive at N = {TARGET_SPEEDUP_N:,} "
              f"({speedup:.0f}x)")
    if TARGET_PEAK_N in results:
        peak = results[TARGET_PEAK_N][0]["peak_mb"]
        passed = peak < TARGET_PEAK_MB
        ok &= passed
        verdict = "PASS" if passed else "FAIL"
        print(f"{verdict}: N = {TARGET_PEAK_N:,} peak under {TARGET_PEAK_MB:.0f} MB ({peak:.0f} MB)")
    if args.quick:
        print("(--quick: targets are checked at N = 2,000 and 5,000 only)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
