"""The embedding store: a second find_duplicates run embeds only new photos; --against embeds only the new batch.

    python benchmarks/bench_embedding_store.py [--n 5000] [--new 250] [--against 100] [--method relative]

Photos: bench_find_duplicates.generate (small generated JPEGs, 10% exact and 10% resized copies). Every run
is a separate ``find_duplicates.py`` process with its own store file; the time printed is the process's
wall clock (Python start, model load, store read and write included) and, in brackets, the run's own
``seconds`` (walk + embed + search + grouping).

1. first run on n - new photos (empty store), then ``new`` photos are added and the second run covers n;
2. a ``--no-cache`` run on the same n photos: the reference groups (and the cost without a store);
3. a library of n photos in the store, then ``--against``: ``against`` new photos, none of whose bytes are in
   the store (half re-encoded copies of library photos, half new drawings), against it.

Targets (PASS/FAIL): second run >= 10x faster than the first, with the same groups as the --no-cache run;
the --against run embeds exactly the new photos and reports only cross pairs (its time is printed beside the
library's first run and the --no-cache run of all n). Each run also prints where its own seconds went. Run it
under the shared CPU lock: ``flock /tmp/samespace-heavy.lock python benchmarks/bench_embedding_store.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import numpy as np  # noqa: E402
from bench_find_duplicates import _photo, generate  # noqa: E402
from PIL import Image  # noqa: E402

from samespace import scoring_methods  # noqa: E402

SPEEDUP_TARGET = 10.0


def run(argv: list[str], out: Path) -> tuple[float, dict]:
    """One find_duplicates.py process: (wall seconds, its JSON document)."""
    t = time.perf_counter()
    cmd = [sys.executable, str(REPO / "find_duplicates.py"), *argv, "--no-progress", "--json", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t, json.loads(out.read_text())


def timings(summary: dict) -> str:
    """Where a run's own seconds went (find_duplicates' summary timings)."""
    return ", ".join(f"{k} {v:.1f} s" for k, v in summary["timings"].items())


def groups(document: dict) -> list[list[str]]:
    return sorted(sorted(Path(m).name for m in g["members"]) for g in document["groups"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--new", type=int, default=250)
    parser.add_argument("--against", type=int, default=100)
    parser.add_argument("--method", choices=scoring_methods.REFERENCE_METHODS, default="relative",
                        help="default: relative, find_duplicates' default")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/samespace_bench_store"))
    args = parser.parse_args()
    source = generate(args.cache / f"source{args.n}", args.n)
    work = args.cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    photos = work / "photos"
    files = sorted(source.rglob("*.jpg"))
    for f in files[: args.n - args.new]:
        target = photos / f.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    store = work / "store.npz"
    common = ["--method", args.method]

    first_s, first = run([str(photos), *common, "--store", str(store)], work / "first.json")
    for f in files[args.n - args.new :]:
        target = photos / f.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    second_s, second = run([str(photos), *common, "--store", str(store)], work / "second.json")
    plain_s, plain = run([str(photos), *common, "--no-cache"], work / "plain.json")
    print(f"{args.method}, {args.n:,} photos ({args.new} new in the second run)")
    for name, s, d in (("first run (empty store)", first_s, first), ("second run", second_s, second),
                       ("--no-cache run", plain_s, plain)):
        m = d["summary"]
        print(f"  {name:<24} {s:>7.1f} s  [{m['seconds']:.1f} s in the run]  {m['images']:,} photos, "
              f"embedded {m['embedded']:,}, from the store {m['from_store']:,}, {m['groups']:,} groups")
        print(f"    timings: {timings(m)}")
    speedup = first_s / second_s
    same = groups(second) == groups(plain)
    print(f"{'PASS' if speedup >= SPEEDUP_TARGET else 'FAIL'}: second run {speedup:.1f}x faster than the first "
          f"(target >= {SPEEDUP_TARGET:g}x; {first['summary']['seconds'] / second['summary']['seconds']:.1f}x "
          "counting the runs' own seconds)")
    print(f"{'PASS' if same else 'FAIL'}: the second run's groups equal the --no-cache run's "
          f"({len(groups(plain)):,} groups)")

    # new photos against the library (the n photos now in the store): none of their bytes are in the store
    new = work / "new"
    new.mkdir()
    rng = np.random.default_rng(1)
    for k in range(args.against):
        if k % 2 == 0:  # a re-encoded copy of a library photo: a duplicate with unseen bytes
            with Image.open(files[(k * 7919) % args.n]) as src:
                src.convert("RGB").save(new / f"copy_{k}.jpg", "JPEG", quality=int(rng.integers(60, 70)))
        else:  # a photo unlike any in the library
            _photo(rng).save(new / f"other_{k}.jpg", "JPEG", quality=90)
    against_s, against = run([str(new), "--against", str(photos), *common, "--store", str(store)],
                             work / "against.json")
    m = against["summary"]
    print(f"  --against: {m['new_images']} new vs a library of {m['library_images']:,}: {against_s:.1f} s "
          f"[{m['seconds']:.1f} s in the run], embedded {m['embedded']}, from the store {m['from_store']:,}, "
          f"{m['groups']} new photos with matches, {m['pairs_scored']:,} pairs scored ({m['candidates']})")
    print(f"    timings: {timings(m)}")
    cross = all((Path(a).parent == new) != (Path(b).parent == new) for a, b, *_ in against["pairs"])
    only_new = m["embedded"] == m["new_images"] == args.against and m["from_store"] == m["library_images"]
    print(f"{'PASS' if only_new and cross else 'FAIL'}: --against embedded {m['embedded']} photos, exactly the "
          f"{args.against} new ones (the library's {m['library_images']:,} came from the store); only cross pairs: "
          f"{cross}; {first_s / against_s:.1f}x faster than the library's first run ({first_s:.1f} s), "
          f"{plain_s / against_s:.1f}x faster than embedding all {args.n:,} ({plain_s:.1f} s, --no-cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
