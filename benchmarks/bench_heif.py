"""HEIF / HEIC decoding against JPEG: the same photos in both formats, decoded by the project's one decoder.

    python benchmarks/bench_heif.py --photos 6 --size 4032x3024

Writes ``--photos`` phone-sized photos (a real development photo, upscaled, each shifted and with its own
sensor-like noise, ``--noise`` grey levels) as JPEG and as HEIC at ``--quality``, then times
``decoding.decode_image`` over each set, alternating the formats three times, and prints photos per second and
the HEIC / JPEG ratio. JPEG decodes at a reduced scale (Pillow's draft); HEIF has no such mode, so every HEIC
pixel is decoded. Needs pillow-heif.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from samespace import decoding, image_formats  # noqa: E402


def photos(source: Path, count: int, size: tuple[int, int], noise: float,
           quality: int) -> dict[str, list[bytes]]:
    """``count`` photos of ``size`` as JPEG and HEIC bytes."""
    rng = np.random.default_rng(0)
    with Image.open(source) as img:
        base = np.asarray(img.convert("RGB").resize(size, Image.Resampling.BICUBIC), np.int16)
    out: dict[str, list[bytes]] = {"JPEG": [], "HEIF": []}
    for k in range(count):
        pixels = np.roll(base, 7 * k, axis=1) + rng.normal(0, noise, base.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        for fmt in out:
            buffer = io.BytesIO()
            image.save(buffer, fmt, quality=quality)
            out[fmt].append(buffer.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--noise", type=float, default=1.0, help="noise std in grey levels (default 1)")
    parser.add_argument("--quality", type=int, default=85, help="JPEG and HEIC quality (default 85)")
    parser.add_argument("--size", default="4032x3024", help="WIDTHxHEIGHT of each photo (default: a 12 MP phone)")
    parser.add_argument("--source", type=Path, default=REPO / "data" / "real" / "Test Data" / "indoor"
                        / "kodi-data_100014_1.jpg", help="the photo upscaled into the set")
    args = parser.parse_args(argv)
    if not image_formats.enable_heif():
        raise SystemExit(f"pillow-heif is not installed: {image_formats.HEIF_EXTRA}")
    size = tuple(int(v) for v in args.size.lower().split("x"))
    sets = photos(args.source, args.photos, size, args.noise, args.quality)
    seconds: dict[str, list[float]] = {fmt: [] for fmt in sets}
    for _ in range(3):
        for fmt, blobs in sets.items():
            start = time.perf_counter()
            for k, blob in enumerate(blobs):
                decoding.decode_image(f"photo_{k}.{fmt.lower()}", content=blob)
            seconds[fmt].append(time.perf_counter() - start)
    rate = {fmt: args.photos / min(s) for fmt, s in seconds.items()}
    mb = {fmt: sum(map(len, blobs)) / len(blobs) / 1e6 for fmt, blobs in sets.items()}
    print(f"{args.photos} photos of {size[0]}x{size[1]}, noise {args.noise}, quality {args.quality}, "
          f"{image_formats.heif_version()}, one decoding thread, best of 3")
    for fmt in sets:
        print(f"{fmt}: {rate[fmt]:.1f} photos/s, {mb[fmt]:.2f} MB a photo")
    print(f"HEIF / JPEG decode rate: {rate['HEIF'] / rate['JPEG']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
