"""Speed and memory of find_duplicates on generated folders of 1,000 / 5,000 / 20,000 small photos.

    python benchmarks/bench_find_duplicates.py [--sizes 1000 5000 20000] [--method model] [--budget-minutes 25]

Each folder (generated once into --cache, default /tmp/samespace_bench) holds synthetic 64-128 px JPEGs, about
10% of them exact copies and 10% resized re-encoded copies of another photo. Each size runs in its own process
(so its peak RSS is its own) with the default candidate search and ``backbone_weights none`` (random weights:
timing only). Printed per size: images/s, peak RSS, and where the time goes: waiting for decoding, the
backbone ("embed": preprocessing + forward pass + head projection, per image), candidate search + pair scoring,
grouping. Targets (PASS/FAIL): pair scoring + grouping <= 20% of the total at 5,000 images; peak RSS < 4 GB at
20,000; time per image at 20,000 within 1.3x of that at 5,000 (about linear).

One batch is timed first; sizes that would not fit in --budget-minutes are not run, and the output says so.

    python benchmarks/bench_find_duplicates.py --compare-decoding [--n 1000] [--large 300] [--workers N] [--repeat 2]

compares the decode pools instead: the backbone alone (``scorer.embed`` on photos decoded beforehand) against
find's embed stage (finder.embed_photos: decoding in a pool of threads or of processes, overlapped with the model),
in photos/s, on the first ``--n`` photos of the smallest folder and on ``--large`` generated 1200x900 JPEGs (camera
photos decode ~100x slower than the small ones). Target (PASS/FAIL): the default pool keeps >= 85% of the
backbone-alone speed; each figure is the best of ``--repeat`` runs, the pools alternated.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _rss import peak_rss_gb  # noqa: E402  (benchmarks/ is on sys.path: the scripts run from it)

from samespace import batch_decoding, decoding, finder, model_scorer, scorers, scoring_methods  # noqa: E402

SIZES = (1000, 5000, 20000)
SHARE_TARGET = 0.20
MEMORY_TARGET_GB = 4.0
LINEAR_TOLERANCE = 1.3
OVERLAP_TARGET = 0.85  # embed stage / backbone alone


def _photo(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(64, 129)), int(rng.integers(64, 129))
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(4, w)), y0 + int(rng.integers(4, h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x1, y1], fill=colour)
    return img


def generate(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs in 10 sub-folders: 80% distinct, 10% exact copies, 10% resized (0.75x) re-encoded copies."""
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    rng = np.random.default_rng(seed)
    originals: list[Path] = []
    for k in range(n):
        sub = folder / f"d{k % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img_{k:06d}.jpg"
        kind = rng.random()
        if originals and kind < 0.1:
            path.write_bytes(originals[int(rng.integers(len(originals)))].read_bytes())
        elif originals and kind < 0.2:
            with Image.open(originals[int(rng.integers(len(originals)))]) as src:
                small = src.resize(
                    (max(16, src.width * 3 // 4), max(16, src.height * 3 // 4)), Image.Resampling.LANCZOS
                )
            small.save(path, "JPEG", quality=70)
        else:
            buffer = io.BytesIO()
            _photo(rng).save(buffer, "JPEG", quality=int(rng.integers(70, 96)))
            path.write_bytes(buffer.getvalue())
            originals.append(path)
    marker.write_text(str(n))
    return folder


def _scorer(method: str, batch_size: int):
    import torch


    if method == "model":
        from samespace.siamese import SiameseNetwork

        torch.manual_seed(0)
        return model_scorer.ModelScorer(SiameseNetwork(backbone_weights="none"), batch_size=batch_size)
    if method == "cosine":
        from samespace.backbones import build_feature_extractor

        return scorers.CosineScorer(build_feature_extractor("mobilenet_v3_large", "none"), batch_size=batch_size)
    return scorers.HashScorer(method)


def run_one(folder: Path, method: str, batch_size: int) -> dict:
    """One find_duplicates run in this process; the summary plus peak RSS."""

    scorer = _scorer(method, batch_size)
    threshold = 0.5 if method == "model" else scoring_methods.DEFAULT_THRESHOLDS[method]
    result = finder.find_duplicates([folder], scorer, threshold, batch_size=batch_size, progress=False)
    out = result.summary
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def time_one_batch(folder: Path, method: str, batch_size: int, batches: int = 3) -> float:
    """Seconds per image of decode + embed, the mean of ``batches`` batches after a warm-up batch."""

    paths = sorted(folder.rglob("*.jpg"))[: (batches + 1) * batch_size]
    scorer = _scorer(method, batch_size)
    scorer.add(np.stack([decoding.load_image(p) for p in paths[:batch_size]]))
    t = time.perf_counter()
    for start in range(batch_size, len(paths), batch_size):
        scorer.add(np.stack([decoding.load_image(p) for p in paths[start : start + batch_size]]))
    return (time.perf_counter() - t) / max(len(paths) - batch_size, 1)


def generate_large(folder: Path, n: int, seed: int = 1) -> Path:
    """``n`` 1200x900 JPEGs (quality 90) of smooth gradients and shapes: camera-sized photos to decode."""
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:900, 0:1200].astype(np.float32)
    for k in range(n):
        a, b, c = rng.random(3) * 0.02
        base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * xx + a * yy)], -1)
        pixels = ((base * 0.5 + 0.5) * 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, 1100)), int(rng.integers(0, 800))
            draw.ellipse([x0, y0, x0 + int(rng.integers(20, 300)), y0 + int(rng.integers(20, 300))],
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        img.save(folder / f"large_{k:05d}.jpg", "JPEG", quality=90)
    marker.write_text(str(n))
    return folder


def compare_decoding(paths: list[Path], method: str, batch_size: int, workers: int, repeat: int) -> dict[str, float]:
    """Photos/s of the backbone alone and of find's embed stage with each decode pool (best of ``repeat``)."""
    decoded = [r for r in (batch_decoding.decode_path(p) for p in paths) if not isinstance(r, str)]
    images = np.stack([r[0] for r in decoded])
    aspects = np.array([r[1] for r in decoded])
    best: dict[str, float] = {}
    for _ in range(repeat):
        scorer = _scorer(method, batch_size)
        scorer.embed(images[:batch_size], aspects[:batch_size])  # warm-up
        t = time.perf_counter()
        for start in range(0, len(images), batch_size):
            scorer.embed(images[start : start + batch_size], aspects[start : start + batch_size])
        best["backbone"] = max(best.get("backbone", 0.0), len(images) / (time.perf_counter() - t))
        for pool in batch_decoding.POOLS:
            scorer = _scorer(method, batch_size)
            scorer.embed(images[:batch_size], aspects[:batch_size])
            t = time.perf_counter()
            finder.embed_photos(paths, scorer, None, batch_size, progress=False, decode_workers=workers,
                                decode_pool=pool)
            best[pool] = max(best.get(pool, 0.0), len(paths) / (time.perf_counter() - t))
    return best


def main_compare(args: argparse.Namespace) -> int:
    """--compare-decoding: the pools against the backbone alone, on small and on camera-sized photos."""
    workers = args.workers or batch_decoding.default_workers()
    small = sorted(generate(args.cache / f"n{min(args.sizes)}", min(args.sizes)).rglob("*.jpg"))[: args.n]
    sets = {f"{len(small)} small (64-128 px)": small}
    if args.large:
        sets[f"{args.large} large (1200x900)"] = sorted(generate_large(args.cache / f"large{args.large}",
                                                                       args.large).glob("*.jpg"))
    print(f"method {args.method}, batch {args.batch_size}, {workers} decode workers, best of {args.repeat}; "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'photos':>26} {'backbone img/s':>15} " + " ".join(f"{p + ' img/s':>14} {'ratio':>6}"
                                                                 for p in batch_decoding.POOLS))
    ok = True
    for name, paths in sets.items():
        best = compare_decoding(paths, args.method, args.batch_size, workers, args.repeat)
        print(f"{name:>26} {best['backbone']:15.1f} " + " ".join(
            f"{best[p]:14.1f} {best[p] / best['backbone']:6.2f}" for p in batch_decoding.POOLS))
        ratio = best[batch_decoding.DEFAULT_POOL] / best["backbone"]
        ok = ok and ratio >= OVERLAP_TARGET
        print(f"{'PASS' if ratio >= OVERLAP_TARGET else 'FAIL'}: {name}: the default pool "
              f"({batch_decoding.DEFAULT_POOL}) keeps {ratio:.0%} of the backbone-alone speed (target >= 85%)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--method", choices=("model", "cosine", "whash", "phash"), default="model")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/samespace_bench"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--budget-minutes", type=float, default=25.0)
    parser.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compare-decoding", action="store_true", help="the decode pools against the backbone alone")
    parser.add_argument("--n", type=int, default=1000, help="--compare-decoding: small photos")
    parser.add_argument("--large", type=int, default=300, help="--compare-decoding: 1200x900 photos (0: none)")
    parser.add_argument("--workers", type=int, help="--compare-decoding: decode workers (default: the cores)")
    parser.add_argument("--repeat", type=int, default=2, help="--compare-decoding: runs per figure (the best)")
    args = parser.parse_args()
    if args.compare_decoding:
        return main_compare(args)
    if args.run_one:
        print(json.dumps(run_one(args.run_one, args.method, args.batch_size)))
        return 0

    t = time.perf_counter()
    folders = {n: generate(args.cache / f"n{n}", n) for n in sorted(args.sizes)}
    print(f"folders ready in {time.perf_counter() - t:.1f} s under {args.cache}")
    per_image = time_one_batch(folders[min(folders)], args.method, args.batch_size)
    budget = args.budget_minutes * 60
    print(
        f"one batch: {per_image * 1000:.1f} ms per image (decode + embed, mean of 3 batches of {args.batch_size}); "
        f"estimated total {sum(n * per_image for n in folders) / 60:.1f} min for sizes {sorted(folders)} "
        f"(budget {args.budget_minutes:g} min)"
    )
    print(f"load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    started = time.perf_counter()
    results = {}
    header = (
        f"{'images':>7} {'img/s':>7} {'total s':>8} {'peak GB':>8} {'decode':>7} {'embed':>7} {'pairs':>7} "
        f"{'group':>6} {'outside bb':>10} {'pairs+grp':>9} {'scored':>10} {'dup pairs':>9} {'groups':>7}  candidates"
    )
    print(header)
    not_run = []
    for n in sorted(folders):
        estimate = n * per_image
        if time.perf_counter() - started + estimate > budget:
            not_run.append(n)
            print(
                f"{n:>7} NOT RUN: estimated {estimate / 60:.1f} min would exceed the {args.budget_minutes:g} min budget"
            )
            continue
        cmd = [sys.executable, __file__, "--run-one", str(folders[n]), "--method", args.method]
        cmd += ["--batch-size", str(args.batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{n}: FAILED\n{proc.stderr[-2000:]}")
            return 1
        s = json.loads(proc.stdout.strip().splitlines()[-1])
        results[n] = s
        tm, total = s["timings"], s["seconds"]
        per_image = max(per_image, total / s["images"])  # measured beats estimated
        outside = total - tm["embed"]
        pairs_group = tm["pairs"] + tm["group"]
        print(
            f"{n:>7} {s['images'] / total:>7.1f} {total:>8.1f} {s['peak_rss_gb']:>8.2f} {tm['decode_wait']:>7.1f} "
            f"{tm['embed']:>7.1f} {tm['pairs']:>7.2f} {tm['group']:>6.3f} {outside / total:>10.1%} "
            f"{pairs_group / total:>9.1%} {s['pairs_scored']:>10,} {s['duplicate_pairs']:>9,} {s['groups']:>7,}"
            f"  {s['candidates']}"
        )

    print(f"\nload average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not_run:
        print(f"NOT RUN within the {args.budget_minutes:g} min budget: sizes {not_run}")
    if 5000 in results:
        s = results[5000]
        share = (s["timings"]["pairs"] + s["timings"]["group"]) / s["seconds"]
        verdict = "PASS" if share <= SHARE_TARGET else "FAIL"
        print(f"{verdict}: pair scoring + grouping at 5,000 images = {share:.1%} of total (target <= 20%)")
    else:
        print("NOT RUN: the 5,000-image share target")
    if 20000 in results:
        gb = results[20000]["peak_rss_gb"]
        print(f"{'PASS' if gb < MEMORY_TARGET_GB else 'FAIL'}: peak RSS at 20,000 images = {gb:.2f} GB (target < 4 GB)")
    else:
        print("NOT RUN: the 20,000-image memory target")
    if 5000 in results and 20000 in results:
        per5 = results[5000]["seconds"] / results[5000]["images"]
        per20 = results[20000]["seconds"] / results[20000]["images"]
        ratio = per20 / per5
        verdict = "PASS" if ratio <= LINEAR_TOLERANCE else "FAIL"
        print(
            f"{verdict}: time per image {per5 * 1000:.1f} ms at 5,000, {per20 * 1000:.1f} ms at 20,000: "
            f"ratio {ratio:.2f} (target <= {LINEAR_TOLERANCE}, about linear)"
        )
    else:
        print("NOT RUN: the 5,000 -> 20,000 linearity target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
