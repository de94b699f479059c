"""Feature extraction split over local processes: time with 1 and with 2 processes (torchrun, gloo).

    python benchmarks/bench_distributed.py [--images 233] [--procs 1 2]

Each run is `torchrun --nproc_per_node P` over this script's worker, which times feature_cache.extract_features on
the generated sample set's Training Data (mobilenet_v3_large, random weights: timing does not depend on the
weight values; 8 variants per image; files decoded in batches) with its rank's share and the gather that
gives every rank the whole table. One thread per process in both cases (OMP_NUM_THREADS=1 and
torch.set_num_threads(1)), so the comparison is of processes, not of threads. Target (2 cores): 2 processes
take at most 0.65x the time of 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from samespace import labelling  # noqa: E402
from samespace.devsets import sample_set  # noqa: E402

TARGET = 0.65


def worker(image_dir: Path, limit: int) -> None:
    """One process of a run: extract its share, gather; the chief prints the wall time of the slowest rank."""
    import torch
    import torch.distributed as dist

    from samespace import sharding
    from samespace.backbones import build_feature_extractor
    from samespace.feature_cache import extract_features

    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    shard = sharding.current()
    paths = labelling.find_images(image_dir)[:limit]
    torch.manual_seed(0)
    extractor = build_feature_extractor("mobilenet_v3_large", "none")
    sharding.barrier(shard)
    start = time.perf_counter()
    table = extract_features(extractor, paths, progress=False, shard=shard)
    sharding.barrier(shard)
    seconds = time.perf_counter() - start
    if shard.is_chief:
        result = {"procs": shard.size, "images": len(paths), "shape": list(table.shape), "seconds": seconds}
        print("RESULT " + json.dumps(result), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()  # orderly gloo teardown: a rank exiting with it alive can abort


def run(procs: int, image_dir: Path, limit: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), __file__,
               "--worker", str(image_dir), "--images", str(limit)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    result = json.loads(lines[0].removeprefix("RESULT "))
    print(f"{procs} process(es): {result['images']} images x 8 variants, table {tuple(result['shape'])}: "
          f"{result['seconds']:.1f} s", flush=True)
    return float(result["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", type=Path, metavar="IMAGE_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=10_000, help="at most this many images (default: all 233)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.images)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        root = sample_set.write_sample_dataset(Path(tmp) / "sample", seed=0)
        times = {procs: run(procs, root / "Training Data", args.images) for procs in args.procs}
    if 1 in times:
        for procs, seconds in times.items():
            if procs != 1:
                ratio = seconds / times[1]
                verdict = "meets" if ratio <= TARGET else "misses"
                print(f"{procs} processes / 1 process: {ratio:.2f}x ({verdict} the target <= {TARGET}x)")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} (other processes on the machine distort it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
