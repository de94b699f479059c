"""A store of keypoints in memory or memory-mapped: what a run over a large ``calibrated`` store holds, side by side.

    python benchmarks/bench_store_memory.py [--rows 20000] [--new 100]

Builds a store of ``rows`` synthetic photos with the calibrated method's fields (``bench_store.field_specs``: a
1280-d vector and 500 keypoints, 73 KB a photo), then runs in a child process each, alternating:

- ``before``: the fields read into memory (``store_format.MAP_FROM`` above the store's size) and a compaction that
  builds the whole file in memory (``to_bytes``), as the store worked before mapping and streaming;
- ``now``: the defaults: fields of 64 MiB and more memory-mapped once checked, and compaction streamed.

Each child opens the store (every member checked), hands every row to a consumer in batches of
``finder.FROM_STORE_BATCH`` as ``samespace find`` does, adds ``new`` photos and saves a segment, then compacts. It
prints the seconds of each step, the peak resident memory (which counts mapped file pages while cached) and the
anonymous memory (what the process holds itself: its highest, sampled every 10 ms), and checks that the compacted
file reads back with every row. Printed side by side with now / before.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rss import peak_rss_bytes  # noqa: E402
from bench_keypoint_table import anonymous_bytes  # noqa: E402
from bench_store import FP, add_photos, field_specs  # noqa: E402

from samespace import embedding_store, finder, outputs, store_format  # noqa: E402

METHOD = "calibrated"


class AnonymousPeak(threading.Thread):
    """The highest anonymous memory of this process, sampled every 10 ms until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = anonymous_bytes()
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, anonymous_bytes())


def run_mode(mode: str, path: Path, rows: int, new: int) -> dict[str, float]:
    specs = field_specs(METHOD)
    if mode == "before":
        store_format.MAP_FROM = 1 << 62
    sampler = AnonymousPeak()
    t = time.perf_counter()
    store = embedding_store.open_store(path, FP, METHOD, specs, strict=True)
    opened = time.perf_counter() - t
    t = time.perf_counter()
    keys = store.keys()
    for start in range(0, len(keys), finder.FROM_STORE_BATCH):
        batch = store.get(keys[start : start + finder.FROM_STORE_BATCH])
        del batch
    gathered = time.perf_counter() - t
    t = time.perf_counter()
    add_photos(store, specs, new, 10**9)
    store.save(path)
    appended = time.perf_counter() - t
    t = time.perf_counter()
    if mode == "before":
        outputs.atomic_write(path, store.to_bytes())
        for segment in store_format.segment_paths(path):
            segment.unlink()
    else:
        store.save(path, compact=True)
    compacted = time.perf_counter() - t
    sampler.done.set()
    sampler.join()
    complete = len(embedding_store.open_store(path, FP, METHOD, specs, strict=True)) == rows + new
    return {"open_s": opened, "gather_s": gathered, "append_s": appended, "compact_s": compacted,
            "peak_gb": peak_rss_bytes() / 1e9, "anon_gb": sampler.peak / 1e9, "complete": float(complete)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--mode", choices=["before", "now"], help=argparse.SUPPRESS)  # one run, in a child
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.path, args.rows, args.new)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-store-memory-") as tmp:
        built = Path(tmp) / "built.npz"
        t = time.perf_counter()
        store = embedding_store.EmbeddingStore(FP, METHOD, field_specs(METHOD))
        add_photos(store, field_specs(METHOD), args.rows, 0)
        store.save(built)
        del store
        print(f"store: {args.rows:,} photos, {built.stat().st_size / 1e9:.2f} GB (built in "
              f"{time.perf_counter() - t:.0f} s); each mode on its own copy, in the page cache")
        results = {}
        for mode in ("before", "now"):
            folder = Path(tmp) / mode
            folder.mkdir()
            path = folder / "store.npz"
            path.write_bytes(built.read_bytes())
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--path", str(path), "--rows",
                                  str(args.rows), "--new", str(args.new)], check=True, capture_output=True, text=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            path.unlink()
    columns = ("open_s", "gather_s", "append_s", "compact_s", "peak_gb", "anon_gb")
    print(f"{'mode':>7} " + " ".join(f"{c:>10}" for c in columns) + "   reads back")
    for mode, r in results.items():
        print(f"{mode:>7} " + " ".join(f"{r[c]:10.2f}" for c in columns) + f"   {'yes' if r['complete'] else 'NO'}")
    print("now / before: " + ", ".join(f"{c} {results['now'][c] / max(results['before'][c], 1e-9):.2f}"
                                       for c in columns))


if __name__ == "__main__":
    main()
