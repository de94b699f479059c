"""On a CUDA machine: does find's embed stage keep up with the GPU? One run, under 5 minutes.

    python benchmarks/bench_gpu.py [--photos 3000] [--batch-size 128] [--workers N] [--backbone efficientnet_lite0]

Measured, in photos/s:

1. the backbone alone on the GPU (inputs already there, random weights: timing only) in each ``--precision``
   (samespace.backbones.PRECISIONS: fp32 with TF32 off, bf16 and fp16 autocast);
2. the decode ceiling of this machine's cores: batch_decoding.decoded_batches in a process pool of ``--workers``
   (default: the cores) over ``--photos`` generated 1200x900 JPEGs (distinct bytes: a few drawings, each copy with
   its own trailing bytes, so each decodes in full), no model;
3. find's embed stage (finder.embed_photos, cosine scorer on CUDA, no store) over the same photos, with the default
   decode pool and with a process pool; then with the scorers that also find SIFT keypoints in the decode pool
   (``verified``, ``calibrated``), process pool;
4. JPEG decoding on the GPU (torchvision.io.decode_jpeg on CUDA, batches of ``--batch-size``, the bytes read from
   disk, each photo resized to 256 px as the project's decode does): is it faster than the cores' pool? It gives
   other pixels than the project's single decode path (PIL), so it would replace that path only if it were.

Printed: each figure and the ratios embed stage / backbone fp32 and decode ceiling / backbone fp32 (below 1: the
cores, not the GPU, set the speed). On a machine without CUDA it says so, runs a tiny CPU smoke run of the same
steps (8 photos), and exits 0.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from samespace import batch_decoding, finder, scorers  # noqa: E402
from samespace.backbones import PRECISIONS, FrozenFeatureExtractor, build_feature_extractor  # noqa: E402

DRAWINGS = 24  # distinct pictures; the rest are byte-distinct copies (same decoding cost)


def generate(folder: Path, n: int) -> list[Path]:
    """``n`` 1200x900 JPEGs (quality 90) with distinct bytes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:900, 0:1200].astype(np.float32)
    drawings = []
    for _ in range(min(n, DRAWINGS)):
        a, b, c = rng.random(3) * 0.02
        base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * xx + a * yy)], -1)
        img = Image.fromarray(((base * 0.5 + 0.5) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, 1100)), int(rng.integers(0, 800))
            draw.ellipse([x0, y0, x0 + int(rng.integers(20, 300)), y0 + int(rng.integers(20, 300))],
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=90)
        drawings.append(buffer.getvalue())
    paths = []
    for k in range(n):
        path = folder / f"photo_{k:05d}.jpg"
        path.write_bytes(drawings[k % len(drawings)] + k.to_bytes(4, "big"))  # after the JPEG's end: ignored
        paths.append(path)
    return paths


def backbone_alone(extractor: FrozenFeatureExtractor, device: str, batch_size: int, seconds: float,
                   precision: str) -> float:
    """Photos/s of the backbone in ``precision`` on inputs already on ``device`` (after warm-up), for about
    ``seconds``."""
    x = torch.rand(batch_size, 3, 256, 256, device=device).contiguous(memory_format=torch.channels_last)
    extractor.set_precision(precision)
    with torch.inference_mode():
        for _ in range(3):
            extractor(x)
        sync(device)
        done, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            extractor(x)
            done += batch_size
        sync(device)
    return done / (time.perf_counter() - t)


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def decode_ceiling(paths: list[Path], batch_size: int, workers: int) -> float:
    """Photos/s of decoding alone in a process pool (the pool's start included: find pays it too)."""
    t = time.perf_counter()
    for _ in batch_decoding.decoded_batches(paths, batch_size, workers, pool="process"):
        pass
    return len(paths) / (time.perf_counter() - t)


def gpu_decode(paths: list[Path], device: str, batch_size: int, side: int = 256) -> float:
    """Photos/s of reading the files and decoding them with torchvision.io.decode_jpeg on ``device``, each resized
    so that its shorter side is ``side`` (antialiased bilinear), batch by batch."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as tf

    t = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in batch]
        for image in decode_jpeg(datas, device=device):
            tf.resize(image, [side], antialias=True)
    sync(device)
    return len(paths) / (time.perf_counter() - t)


def embed_stage(paths: list[Path], backbone: str, device: str, batch_size: int, workers: int, pool: str,
                method: str = "cosine") -> float:
    """Photos/s of finder.embed_photos (decode overlapped with the model) with ``method``'s scorer on ``device``
    (random backbone weights: timing only; ``verified`` and ``calibrated`` also find SIFT keypoints)."""
    if method == "cosine":
        extractor = build_feature_extractor(backbone, "none").to(device)
        scorer = scorers.CosineScorer(extractor, batch_size=batch_size, device=device)
    else:
        scorer = scorers.reference_scorer(method, backbone, "none", device, batch_size)
    t = time.perf_counter()
    finder.embed_photos(paths, scorer, None, batch_size, progress=False, decode_workers=workers, decode_pool=pool)
    sync(device)
    return len(paths) / (time.perf_counter() - t)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: the cores)")
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        choices=("efficientnet_lite0", "mobilenet_v3_large"))
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    n, batch, seconds = (args.photos, args.batch_size, 10.0) if cuda else (8, 4, 0.5)
    workers = args.workers or batch_decoding.default_workers()
    if not cuda:
        print("no CUDA device here: a tiny CPU smoke run of each step (8 photos); the figures mean nothing")
    else:
        print(f"device: {torch.cuda.get_device_name()}; {workers} decode workers; {n} photos 1200x900; batch {batch}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        paths = generate(Path(tmp), n)
        print(f"generated {n} photos in {time.perf_counter() - t0:.1f} s")
        extractor = build_feature_extractor(args.backbone, "none").to(device).eval()
        alone = {precision: backbone_alone(extractor, device, batch, seconds, precision) for precision in PRECISIONS}
        fp32 = alone["fp32"]
        del extractor
        ceiling = decode_ceiling(paths, batch, workers)
        stages = {f"cosine, {pool} pool": embed_stage(paths, args.backbone, device, batch, workers, pool)
                  for pool in batch_decoding.POOLS}
        for method in ("verified", "calibrated"):
            stages[f"{method}, process pool"] = embed_stage(paths, args.backbone, device, batch, workers, "process",
                                                            method)
        on_gpu = gpu_decode(paths, device, batch)
    print(f"backbone alone ({args.backbone}), photos/s: " + ", ".join(
        f"{precision} {rate:,.0f} ({rate / fp32:.2f} x fp32)" for precision, rate in alone.items()))
    print(f"decode ceiling, {workers} processes: {ceiling:,.0f} photos/s (/ backbone fp32 {ceiling / fp32:.2f})")
    for stage, rate in stages.items():
        print(f"find's embed stage, {stage}: {rate:,.0f} photos/s (/ backbone fp32 {rate / fp32:.2f}, "
              f"/ decode ceiling {rate / ceiling:.2f})")
    print(f"decode_jpeg on {device} and resize: {on_gpu:,.0f} photos/s (/ decode ceiling {on_gpu / ceiling:.2f})")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
