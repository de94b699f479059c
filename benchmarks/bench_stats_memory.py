"""Peak memory of ``data.py stats``: photos streamed (decode, hash, drop) vs. all held decoded (before).

    python benchmarks/bench_stats_memory.py [--rooms-per-type 333] [--cache /tmp/samespace_bench_stats]

Writes (once) a generated split of about 4,000 photos (sample_set.write_sample_dataset: 4 room types, 2-4 photos
per room), then computes its stats twice, each in its own process so each peak RSS is its own: the way
``data.py stats`` runs now (``keep_images=False``: one photo decoded at a time) and the way it ran before
(every photo held decoded, ``keep_images=True``). Prints both peaks, both times and whether the counts agree.
Target (PASS/FAIL): streamed peak RSS <= 600 MB with the same counts. Peaks are also printed above the RSS
of importing data.py, and whether the run imported torch (data.py imports torch and torchvision only inside the
functions that make tensors: importing them alone costs about 0.9 GB here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _rss import peak_rss_mb  # noqa: E402  (benchmarks/ is on sys.path: the scripts run from it)

from samespace import pair_dataset  # noqa: E402
from samespace.devsets import sample_set  # noqa: E402

TARGET_MB = 600


def run_one(split: Path, keep_images: bool) -> dict:

    import_mb = peak_rss_mb()
    t = time.perf_counter()
    dataset = pair_dataset.DuplicateImageDataset(split, progress=False, keep_images=keep_images)
    return {"summary": dataset.summary(), "seconds": time.perf_counter() - t, "import_mb": import_mb,
            "peak_mb": peak_rss_mb(), "torch_imported": "torch" in sys.modules}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms-per-type", type=int, default=333)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/samespace_bench_stats"))
    parser.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep-images", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(run_one(args.run_one, args.keep_images)))
        return 0

    root = args.cache / f"rooms{args.rooms_per_type}"
    if not (root / "Training Data").is_dir():
        t = time.perf_counter()
        sample_set.write_sample_dataset(root, seed=0, rooms={"Training Data": args.rooms_per_type})
        print(f"generated in {time.perf_counter() - t:.0f} s")
    split = root / "Training Data"
    results = {}
    for mode, keep in (("streamed (now)", False), ("held decoded (before)", True)):
        cmd = [sys.executable, __file__, "--run-one", str(split)] + (["--keep-images"] if keep else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:<22} {r['summary']['images']:,} photos: peak RSS {r['peak_mb']:,.0f} MB "
              f"({r['peak_mb'] - r['import_mb']:,.0f} MB above the {r['import_mb']:,.0f} MB of imports), "
              f"{r['seconds']:.1f} s, torch imported: {r['torch_imported']}")
    streamed, held = results["streamed (now)"], results["held decoded (before)"]
    same = streamed["summary"] == held["summary"]
    print(f"counts: {json.dumps(streamed['summary'])}")
    print(f"{'PASS' if same else 'FAIL'}: the same counts both ways")
    ok = streamed["peak_mb"] <= TARGET_MB
    print(f"{'PASS' if ok else 'FAIL'}: streamed peak RSS {streamed['peak_mb']:,.0f} MB (target <= {TARGET_MB} MB; "
          f"held decoded: {held['peak_mb']:,.0f} MB). Above imports: streamed "
          f"{streamed['peak_mb'] - streamed['import_mb']:,.0f} MB, held {held['peak_mb'] - held['import_mb']:,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
