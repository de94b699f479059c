"""Peak memory of local training with the feature cache on many generated photos (target: <= 3 GB at 20,000).

    python benchmarks/bench_training_memory.py [--photos 20000] [--batches 100] [--data DIR] [--backbone-photos 500]
    python benchmarks/bench_training_memory.py --real-backbone [--photos 20000] [--data DIR]   # over an hour

Writes a generated dataset in the sample set's layout (a cheap variant of ``sample_set.write_sample_dataset``: about
3 small photos per room, one test room per type) unless DIR already holds one, then runs ``model_def.main``
(decode -> hash -> pairs, feature extraction streamed from the files, ``--batches`` training steps,
validation, checkpoint) in a fresh process and prints that process's peak RSS.

The frozen MobileNetV3 costs ~25 ms per image and variant on 2 CPU cores, so extracting 20,000 x 8 views takes
over an hour. The 20,000-photo run therefore uses a light stand-in for the frozen backbone with the same output
(960-d pooled features, so the same feature table, pairs and heads): it measures everything that grows with
the number of photos. The memory the real backbone adds runs per extraction batch and does not grow with N;
it is measured on ``--backbone-photos`` photos as (real - stand-in) and added to give the projected peak.
``--real-backbone`` instead runs the whole ``--photos`` run with the real MobileNetV3-Large (random weights: the
same memory and time) and prints its measured peak.
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

from _rss import peak_rss_bytes  # noqa: E402  (benchmarks/ is on sys.path: the scripts run from it)

from samespace import backbones, labelling  # noqa: E402
from samespace.devsets import sample_set  # noqa: E402

TARGET_GB = 3.0
PHOTOS_PER_ROOM = 3  # write_sample_dataset photographs each room 2-4 times


def _light_backbone(backbone: str = "mobilenet_v3_large", weights: str = "imagenet", pooling: str = "avg"):  # noqa: ANN202
    """A cheap frozen extractor with MobileNetV3-Large's output size (960-d pooled features); the signature of
    ``backbones.build_feature_extractor``, which it replaces."""
    from torch import nn


    body = nn.Sequential(nn.AvgPool2d(32), nn.Conv2d(3, 960, 1), nn.AdaptiveAvgPool2d(1))
    # Named as the backbone it stands in for: its input normalisation (preprocess.INPUT_NORMALISATION) applies.
    return backbones.FrozenFeatureExtractor(body, out_dim=960, backbone=backbone)


def child(data_dir: Path, batches: int, light: bool, work: Path) -> None:
    """One training run in this process; prints its peak RSS."""
    import contextlib

    import model_def

    if light:
        backbones.build_feature_extractor = _light_backbone
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        model_def.main(["--data-dir", str(data_dir), "--batches", str(batches), "--hparam", "backbone_weights=none",
                        "--checkpoint-dir", str(work / "ckpt"), "--cache-dir", str(work / "cache")])
    peak = peak_rss_bytes()
    print("RESULT " + json.dumps({"peak_bytes": peak, "seconds": time.perf_counter() - start}), flush=True)


def measure(data_dir: Path, batches: int, light: bool) -> dict:
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "XDG_DATA_HOME": str(Path(work) / "xdg")}
        command = [sys.executable, __file__, "--child", str(data_dir), "--batches", str(batches),
                   "--work", work] + (["--light"] if light else [])
        # The child's progress and log go to this process's stderr (the real backbone's run takes over an hour).
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(command)} failed (exit {result.returncode}); its log is above")
    return json.loads(lines[0].removeprefix("RESULT "))


def write_photos(folder: Path, photos: int, seed: int = 0) -> None:
    """A cheap variant of ``sample_set.write_sample_dataset``: the same rooms and names, small photos.

    Each room is drawn once (``sample_set.draw_room``) and photographed 2-4 times as random crops saved as small
    JPEGs (128x96), with no rotation or exposure edits: about 10x faster to write than the sample set.
    """
    import io

    import numpy as np
    from PIL import Image


    rng = np.random.default_rng(seed)
    rooms = {"Training Data": -(-photos // (len(sample_set.ROOM_TYPES) * PHOTOS_PER_ROOM)), "Test Data": 1}
    room_id = 10_000_000
    for split, per_type in rooms.items():
        staging = folder / f".{split}.partial"
        for room_type in sample_set.ROOM_TYPES:
            (staging / room_type).mkdir(parents=True, exist_ok=True)
            for _ in range(per_type):
                room_id += 1
                city = sample_set.CITIES[int(rng.integers(len(sample_set.CITIES)))]
                scene = sample_set.draw_room(room_type, rng).resize((240, 180), Image.Resampling.BILINEAR)
                for n in range(1, int(rng.integers(2, 5)) + 1):
                    scale = rng.uniform(0.75, 0.95)
                    w, h = int(240 * scale), int(180 * scale)
                    x0, y0 = int(rng.integers(0, 240 - w + 1)), int(rng.integers(0, 180 - h + 1))
                    photo = scene.crop((x0, y0, x0 + w, y0 + h)).resize((128, 96), Image.Resampling.BILINEAR)
                    buffer = io.BytesIO()
                    photo.save(buffer, "JPEG", quality=int(rng.integers(60, 95)))
                    (staging / room_type / f"{city}_{room_id}_{n}.jpg").write_bytes(buffer.getvalue())
        staging.rename(folder / split)


def dataset(folder: Path, photos: int) -> int:
    """Write (unless present) a generated dataset of about ``photos`` training photos; returns the count."""

    if not (folder / "Training Data").is_dir():
        start = time.perf_counter()
        write_photos(folder, photos)
        print(f"generated {folder} in {time.perf_counter() - start:.0f} s", flush=True)
    return len(labelling.find_images(folder / "Training Data"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--data", type=Path, help="dataset folder, written first if absent (default: temporary)")
    parser.add_argument("--backbone-photos", type=int, default=500,
                        help="photos of the run that measures the real backbone's extra memory (0: skip)")
    parser.add_argument("--real-backbone", action="store_true",
                        help="measure the whole run with the real backbone instead of projecting (over an hour)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--light", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.batches, args.light, args.work)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or Path(tmp) / "photos"
        count = dataset(folder, args.photos)
        big = measure(folder, args.batches, light=not args.real_backbone)
        gb = big["peak_bytes"] / 1e9
        backbone = "mobilenet_v3_large" if args.real_backbone else "light stand-in backbone"
        print(f"{count:,} photos, {args.batches} batches, feature cache, {backbone}: peak RSS {gb:.2f} GB "
              f"({big['seconds']:.0f} s)")
        print(f"(decoded pixels of the split, if held: {count * 256 * 256 * 3 / 1e9:.2f} GB; now never held)")
        projected = gb
        if args.backbone_photos and not args.real_backbone:
            small_folder = Path(tmp) / "small"
            small = dataset(small_folder, args.backbone_photos)
            real = measure(small_folder, args.batches, light=False)
            light = measure(small_folder, args.batches, light=True)
            extra = (real["peak_bytes"] - light["peak_bytes"]) / 1e9
            print(f"{small:,} photos: peak RSS {real['peak_bytes'] / 1e9:.2f} GB with mobilenet_v3_large, "
                  f"{light['peak_bytes'] / 1e9:.2f} GB with the stand-in: the real backbone adds {extra:.2f} GB")
            projected = gb + max(extra, 0.0)
        verdict = "meets" if projected <= TARGET_GB else "misses"
        how = "measured" if args.real_backbone else "projected"
        print(f"{how} peak RSS at {count:,} photos with mobilenet_v3_large: {projected:.2f} GB "
              f"({verdict} the target <= {TARGET_GB:.0f} GB)")
    print(f"load average: {os.getloadavg()[0]:.1f}")
    return 0 if projected <= TARGET_GB else 1


if __name__ == "__main__":
    sys.exit(main())
