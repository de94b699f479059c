"""Hostile files meet decoding.decode_image, the one decoding path: FIFOs and devices are refused at once, huge
photos decode within a memory budget, decompression bombs are refused with the reason, and ordinary photos
decode to exactly the pixels the thresholds were calibrated on."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from PIL import Image

import data
from samespace import decoding, finder, labelling, report, scorers

T = TypeVar("T")

# sha256 of decode_image's output (decoded_digest) for each of ordinary_photos, recorded with the decoder as it
# was before read_photo / open_image / load_within_budget existed, under the pinned Pillow (requirements-dev.txt).
# The thresholds are calibrated on these pixels: a change here is a change of every score.
PINNED = {
    "full.jpg": "39a168f2b24c66a55eecac93a429d2e4bb305610ec64f64ded1d86d424521bf2",
    "half.jpg": "26439d1ac60b7bfa236ad8adeb217d5a60e452185878bb6372acfba0d0395e56",
    "quarter.jpg": "9e438b6bd160590b56c5fdb0682925e86339a90f65d07d8ec263dd7b5222f7ad",
    "progressive.jpg": "d4d522acd89878c49188c53a057e4455309cef3fa672a835d7e4f2c636410617",
    "444.jpg": "0f1b0c9c05e02d42be174a62df15cfa2b76d9511f8508340f76a7ae8932818a5",
    "grey.jpg": "db33e56c12d962ed00e5c723cc88462e2b6d050c3f5dd40b43af477cd89bc2c8",
    "cmyk.jpg": "6b29d778216398d903ff9a6481bbc48710db1b2dbbadc764a55b29a0047c8f97",
    "exif3.jpg": "de4f5bbc8e96f2a3ef58d93fc3968e7862c53aba460c860feaa5b7bd76de2198",
    "exif6.jpg": "aabec87acc38b66e91218b1be258ac06f26d4a330eb71d38ed9d70b72ea36a81",
    "exif8.jpg": "9beb0875aeef4759d94241e8fe59eb92cdf1fd55b885f393f3cfa976a65f789a",
    "rgb.png": "030d6144d7b1629d207a9b4c88e86b2b7d4e377729cc099634a1cb8e0bb40a68",
    "rgba.png": "e4094b36d34ec4011c3ad1481644ebcd662c60a0e5ce9f528fd6f5ab6e3d8fc4",
    "palette.png": "1e577e9122fbabd795864516cd147c628ae4ea6261d51afece0b1c44dac2f616",
    "grey.png": "c5c59e0554764caff84fb0ed0529101259a25df027b36a93ef9745c8c29f03e6",
    "grey16.png": "e0a3347fe3e9c33856d1a0431ee7914980b3653c404d2bc356d85da5a300eac1",
    "bilevel.png": "2f27d3c361ce602a6f24cbaac93b8249c333cdf1d687fb9a1af60192bd87eeff",
    "exif6.png": "e43bbca1115144775b9d21a0bc030baa247de4e5536e828d31e1f7fb3962122b",
    "lossless.webp": "7cd7201e94aac11bcbe8620c85ed3ab7360ceda95e591bd8a8cbc44273207673",
    "palette.gif": "65f207da7c6eef274cd9ea8fa389acc3159fd8dd1a48cb2653eda9e50164c737",
    "rgb.bmp": "7cd7201e94aac11bcbe8620c85ed3ab7360ceda95e591bd8a8cbc44273207673",
    "lzw.tiff": "030d6144d7b1629d207a9b4c88e86b2b7d4e377729cc099634a1cb8e0bb40a68",
    "int32.tiff": "ab0afdf836ca5c636fab8120d76621126162c637b3e99eb3d105214b00f2991c",
    "float32.tiff": "09e03bb6c4c01ba6a85f7f368cf1bf5a9cd17dd6c9adfb9566ba38f87665628a",
}
# the same over the generated sample dataset of conftest.sample_root (seed 0, 4 and 2 rooms per type)
PINNED_SAMPLE = (69, "dbabca04b46b0488a7f2d0b42b9e9c7fc308d8d0d2dd78bc53cee3f7c091f8ca")


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _scene(width: int, height: int, seed: int) -> np.ndarray:
    """Gradients plus noise plus blocks: detail at every scale, so resampling differences show in the bytes."""
    rng = np.random.default_rng(seed)
    x = np.arange(width, dtype=np.int16)[None, :]
    y = np.arange(height, dtype=np.int16)[:, None]
    out = np.empty((height, width, 3), np.int16)
    out[..., 0] = x * 255 // max(width - 1, 1)
    out[..., 1] = y * 255 // max(height - 1, 1)
    out[..., 2] = (x + y) % 256
    out += rng.integers(-40, 41, (height, width, 3), dtype=np.int16)
    out[(y // 37 + x // 53) % 5 == 0] //= 2
    return np.clip(out, 0, 255).astype(np.uint8)


def ordinary_photos(folder: Path) -> list[Path]:
    """Synthetic ordinary photos covering the decoder's branches: JPEG at full, 1/2 and 1/4 draft scale,
    progressive, 4:4:4, grey, CMYK, EXIF-rotated; PNG RGB / RGBA / palette with transparency / grey / 16-bit /
    1-bit / EXIF-rotated; lossless WebP, GIF, BMP and TIFF (8-bit, 32-bit integer and float: the duplicate
    finder reads any format PIL reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_scene(1100, 1030, 1))
    small = Image.fromarray(_scene(640, 480, 2))
    large = Image.fromarray(_scene(2600, 2100, 3))
    alpha = small.convert("RGBA")
    alpha.putalpha(Image.fromarray(_scene(640, 480, 4)[..., 0]))
    palette = small.quantize(64)
    palette.info["transparency"] = 3
    grey16_array = (_scene(500, 300, 5)[..., 0].astype(np.uint16) * 257 + 99).astype(np.uint16)
    grey16 = Image.fromarray(grey16_array)
    photos = {
        "full.jpg": (small, "JPEG", {"quality": 90}),
        "half.jpg": (rgb, "JPEG", {"quality": 85}),
        "quarter.jpg": (large, "JPEG", {"quality": 80}),
        "progressive.jpg": (rgb, "JPEG", {"quality": 75, "progressive": True}),
        "444.jpg": (small, "JPEG", {"quality": 95, "subsampling": 0}),
        "grey.jpg": (rgb.convert("L"), "JPEG", {"quality": 90}),
        "cmyk.jpg": (small.convert("CMYK"), "JPEG", {"quality": 90}),
        "exif3.jpg": (rgb, "JPEG", {"quality": 85, "exif": _exif(3)}),
        "exif6.jpg": (rgb, "JPEG", {"quality": 85, "exif": _exif(6)}),
        "exif8.jpg": (small, "JPEG", {"quality": 85, "exif": _exif(8)}),
        "rgb.png": (rgb, "PNG", {}),
        "rgba.png": (alpha, "PNG", {}),
        "palette.png": (palette, "PNG", {"transparency": 3}),
        "grey.png": (small.convert("L"), "PNG", {}),
        "grey16.png": (grey16, "PNG", {}),
        "bilevel.png": (small.convert("1"), "PNG", {}),
        "exif6.png": (small, "PNG", {"exif": _exif(6)}),
        "lossless.webp": (small, "WEBP", {"lossless": True}),
        "palette.gif": (small.quantize(200), "GIF", {}),
        "rgb.bmp": (small, "BMP", {}),
        "lzw.tiff": (rgb, "TIFF", {"compression": "tiff_lzw"}),
        "int32.tiff": (Image.fromarray(grey16_array.astype(np.int32) - 300), "TIFF", {}),
        "float32.tiff": (Image.fromarray(_scene(300, 200, 6)[..., 1].astype(np.float32) * 0.75), "TIFF", {}),
    }
    paths = []
    for name, (image, fmt, options) in photos.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        (folder / name).write_bytes(buffer.getvalue())
        paths.append(folder / name)
    return paths


def decoded_digest(path: Path) -> str:
    """sha256 of the decoded array (shape, dtype, bytes) and the aspect ratio: equal only for identical pixels."""
    image, aspect = decoding.decode_image(path)
    digest = hashlib.sha256(repr((image.shape, image.dtype.str, aspect)).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _within(seconds: float, call: Callable[[], T]) -> T:
    """``call()`` in a thread: its result, or its exception re-raised; a call still blocked after ``seconds``
    fails the test instead of hanging the suite."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


@pytest.fixture()
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO named like a photo. Afterwards a writer end is opened and closed, so a reader that a regression
    left blocked on it gets end-of-file and its thread ends."""
    path = tmp_path / "photos" / "boston_1_9.jpg"
    path.parent.mkdir()
    os.mkfifo(path)
    yield path
    os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG of a hundred-odd bytes whose header declares ``width x height``: one row of data, then the end."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" * (3 * width + 1), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A 64x64 JPEG whose frame header is rewritten to declare ``width x height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, "JPEG")
    raw = buffer.getvalue()
    sof = raw.index(b"\xff\xc0")
    return raw[: sof + 5] + struct.pack(">HH", height, width) + raw[sof + 9 :]


# --------------------------------------------------------------------------------------------
# Ordinary photos: the very pixels the thresholds were calibrated on
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ordinary(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return ordinary_photos(tmp_path_factory.mktemp("ordinary"))


def test_ordinary_photos_decode_to_the_pinned_pixels(ordinary: list[Path]) -> None:
    paths = ordinary
    assert {p.name: decoded_digest(p) for p in paths} == PINNED
    # decoding bytes the caller read is the same decode
    for path in paths[:3]:
        image, aspect = decoding.decode_image(path, content=decoding.read_photo(path)[0])
        reference, reference_aspect = decoding.decode_image(path)
        assert np.array_equal(image, reference) and aspect == reference_aspect


def test_sample_dataset_decodes_to_the_pinned_pixels(sample_root: Path) -> None:
    total = hashlib.sha256()
    count = 0
    for split in labelling.SPLITS:
        for path in labelling.find_images(sample_root / split):
            total.update(f"{path.relative_to(sample_root).as_posix()} {decoded_digest(path)}\n".encode())
            count += 1
    assert (count, total.hexdigest()) == PINNED_SAMPLE


def test_uncompressed_tiff_orientation_is_applied_once(tmp_path: Path) -> None:
    # Reading a path, PIL memory-maps an uncompressed TIFF with the rotated size and decodes it sheared;
    # decoding the bytes it does not. The photo decodes as the same photo in PNG does.
    array = np.zeros((20, 40), np.uint8)
    array[:, 20:] = 200
    for fmt in ("TIFF", "PNG"):
        Image.fromarray(array).save(tmp_path / f"o.{fmt.lower()}", fmt, exif=_exif(6))
    tiff, tiff_aspect = decoding.decode_image(tmp_path / "o.tiff")
    png, png_aspect = decoding.decode_image(tmp_path / "o.png")
    assert tiff_aspect == png_aspect == 0.5
    assert np.array_equal(tiff, png)
    assert tiff[20, 128, 0] == 0 and tiff[235, 128, 0] == 200  # left half on top after turning clockwise


# --------------------------------------------------------------------------------------------
# FIFOs, devices, huge files: refused at once, never waited on
# --------------------------------------------------------------------------------------------


def test_fifo_is_refused_at_once(fifo: Path) -> None:
    for read in (decoding.read_photo, decoding.decode_image, decoding.load_image):
        with pytest.raises(decoding.UnreadableImageError) as info:
            _within(1.0, lambda read=read: read(fifo))
        assert str(info.value) == f"{fifo}: not a regular file (FIFO)"
    assert _within(1.0, lambda: report.thumbnail_uri(fifo)) == ""


def test_file_swapped_for_a_fifo_after_the_check_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    real_open = os.open

    def swap_then_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        if Path(path) == photo:  # between the stat and the open, the photo becomes a FIFO
            photo.unlink()
            os.mkfifo(photo)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", swap_then_open)
    with pytest.raises(decoding.UnreadableImageError) as info:
        _within(1.0, lambda: decoding.decode_image(photo))
    monkeypatch.undo()
    os.close(os.open(photo, os.O_RDWR | os.O_NONBLOCK))  # releases a reader a regression left blocked
    assert str(info.value) == f"{photo}: not a regular file (FIFO)"


def test_devices_and_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(decoding.UnreadableImageError) as info:
        _within(1.0, lambda: decoding.decode_image("/dev/zero"))  # never ends: reading it would exhaust memory
    assert str(info.value) == "/dev/zero: not a regular file (character device)"
    with pytest.raises(decoding.UnreadableImageError) as info:
        decoding.decode_image(tmp_path)
    assert str(info.value) == f"{tmp_path}: not a regular file (directory)"


def test_symlinked_photo_is_read(tmp_path: Path) -> None:
    photo = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (9, 99, 199)).save(photo)
    (tmp_path / "link.png").symlink_to(photo)
    assert decoding.decode_image(tmp_path / "link.png")[0][0, 0].tolist() == [9, 99, 199]
    assert report.thumbnail_uri(tmp_path / "link.png").startswith("data:image/jpeg;base64,")
    assert [p.name for p in labelling.find_images(tmp_path)] == ["a.png", "link.png"]


def test_read_photo_returns_the_bytes_and_the_stat_and_changes_nothing(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(_jpeg_declaring(64, 64))
    before = photo.stat()
    content, info = decoding.read_photo(photo)
    assert content == photo.read_bytes()
    assert (info.st_ino, info.st_size, info.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert photo.stat().st_mtime_ns == before.st_mtime_ns


def test_file_above_the_size_cap_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "MAX_PHOTO_BYTES", 100)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(_jpeg_declaring(64, 64))
    size = photo.stat().st_size
    with pytest.raises(decoding.UnreadableImageError) as info:
        decoding.decode_image(photo)
    assert str(info.value) == f"{photo}: file too large ({size:,} bytes; the limit is 100)"


def test_content_is_decoded_and_the_path_named(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (30, 10), (200, 10, 10)).save(buffer, "PNG")
    image, aspect = decoding.decode_image(tmp_path / "not-there.png", content=buffer.getvalue())  # never opened
    assert aspect == 3.0 and image[5, 5].tolist() == [200, 10, 10]
    with pytest.raises(decoding.UnreadableImageError) as info:
        decoding.decode_image(tmp_path / "junk.png", content=b"junk")
    name = tmp_path / "junk.png"
    assert str(info.value) == f"{name}: cannot read image (UnidentifiedImageError: cannot identify image file '{name}')"


def test_fifo_in_a_folder_is_skipped_with_the_reason(fifo: Path, test_dir: Path) -> None:
    folder = fifo.parent
    for path in labelling.find_images(test_dir)[:3]:
        shutil.copyfile(path, folder / path.name)
    unreadable: list[tuple[Path, str]] = []
    listed = labelling.find_images(folder, unreadable=unreadable)
    assert [p.name for p in listed] == sorted(p.name for p in labelling.find_images(test_dir)[:3])
    assert unreadable == [(fifo, "not a regular file (FIFO)")]
    # the duplicate finder reports it as skipped, with the reason; a path list naming it (a store row) too
    result = _within(20.0, lambda: finder.find_duplicates([folder], scorers.HashScorer("whash"), 0.9, progress=False))
    assert result.skipped == [{"path": str(fifo), "reason": "not a regular file (FIFO)"}]
    assert len(result.paths) == 3
    named = _within(20.0, lambda: finder.find_duplicates([folder], scorers.HashScorer("whash"), 0.9, progress=False,
                                                     paths=[*listed, fifo]))
    assert named.skipped == [{"path": str(fifo), "reason": "not a regular file (FIFO)"}]


# --------------------------------------------------------------------------------------------
# Huge photos and decompression bombs
# --------------------------------------------------------------------------------------------

_WRITE_100MP = """
import json, sys
from PIL import Image, ImageDraw
colours = [tuple(c) for c in json.loads(sys.argv[2])]
image = Image.new("RGB", (12000, 8400))
draw = ImageDraw.Draw(image)
for i in range(4):
    for j in range(4):  # a 4 x 4 grid of flat colours: quick to write, easy to check after a downscale
        draw.rectangle([i * 3000, j * 2100, i * 3000 + 2999, j * 2100 + 2099], fill=colours[(i + j) % 4])
image.save(sys.argv[1], "JPEG", quality=90)
"""
_DECODE_MEASURED = """
import json, resource, sys, time
import numpy as np
from samespace import decoding
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
image, aspect = decoding.decode_image(sys.argv[1])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(sys.argv[2], image)
print(json.dumps({"aspect": aspect, "seconds": seconds, "rss_before_kib": before, "rss_peak_kib": peak}))
"""
_GRID_COLOURS = [(30, 60, 90), (220, 40, 40), (40, 200, 60), (250, 250, 250)]


def test_100_megapixel_jpeg_decodes_within_a_small_memory_budget(tmp_path: Path) -> None:
    # 12000 x 8400 is over PIL's 89.5-megapixel limit, once refused as a bomb. Written and decoded in child
    # processes: the writer's full raster (400 MB) never lands in this one, and the decoder's peak RSS is its own.
    photo, decoded = tmp_path / "big.jpg", tmp_path / "decoded.npy"
    subprocess.run([sys.executable, "-c", _WRITE_100MP, str(photo), json.dumps(_GRID_COLOURS)], check=True, timeout=120)
    done = subprocess.run([sys.executable, "-c", _DECODE_MEASURED, str(photo), str(decoded)],
                          cwd=Path(data.__file__).parent, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    image = np.load(decoded)
    assert image.shape == (256, 256, 3) and measured["aspect"] == 12000 / 8400
    reference = np.zeros((256, 256, 3), np.int16)  # the grid drawn at the decoded size: 64 x 64 cells
    for i in range(4):
        for j in range(4):
            reference[j * 64 : j * 64 + 64, i * 64 : i * 64 + 64] = _GRID_COLOURS[(i + j) % 4]
    error = np.abs(image.astype(np.int16) - reference)
    inside = np.ones((256, 256), bool)
    inside[[*range(62, 67), *range(126, 131), *range(190, 195)]] = False  # cell borders blend after the resize
    inside[:, [*range(62, 67), *range(126, 131), *range(190, 195)]] = False
    assert error[inside].max() <= 8  # JPEG at quality 90
    assert error.mean() < 3
    # drafted to 1/8 scale: a 1500 x 1050 raster (6 MB), not 12000 x 8400 (403 MB in PIL)
    assert (measured["rss_peak_kib"] - measured["rss_before_kib"]) < 100 * 1024, measured
    assert measured["seconds"] < 10, measured


def test_decompression_bombs_are_refused_with_the_reason(tmp_path: Path) -> None:
    cases = {
        "declares.png": (_png_declaring(40000, 40000), "40000x40000 pixels declared, more than the limit of "
                         "1,073,741,824: a decompression bomb"),
        "declares.jpg": (_jpeg_declaring(65000, 65000), "65000x65000 pixels declared, more than the limit of "
                         "1,073,741,824: a decompression bomb"),
        "over_budget.png": (_png_declaring(20000, 20000), "20000x20000 pixels to decode at full size (PNG cannot "
                            "decode at a smaller scale), more than the budget of 134,217,728"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        assert len(content) < 1000
        with pytest.raises(decoding.UnreadableImageError) as info:
            _within(1.0, lambda path=path: decoding.decode_image(path))  # refused from the header, nothing allocated
        assert str(info.value) == f"{path}: cannot read image (DecompressionBombError: {reason})"
        assert _within(1.0, lambda path=path: report.thumbnail_uri(path)) == ""


def test_large_rasters_are_reduced_as_soon_as_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The path a PNG or TIFF over PIL's old limit takes, with the limit lowered so the photos stay small: the
    # raster is turned upright and box-reduced before any conversion, and decodes to the photo it is.
    scene = Image.fromarray(_scene(1200, 1100, 7))
    photos = {
        "rgb.png": (scene, {"compress_level": 1}),  # (quick to write)
        "exif6.png": (scene, {"compress_level": 1, "exif": _exif(6)}),
        "rgba.png": (scene.convert("RGBA"), {"compress_level": 1}),
        "palette.png": (scene.convert("P"), {"compress_level": 1, "transparency": 0}),
        "grey16.png": (Image.fromarray(np.asarray(scene)[..., 0].astype(np.uint16) * 257), {"compress_level": 1}),
        "lzw.tiff": (scene, {"compression": "tiff_lzw", "exif": _exif(8)}),
    }
    for name, (image, options) in photos.items():
        image.save(tmp_path / name, **options)
    full = {name: decoding.decode_image(tmp_path / name) for name in photos}
    monkeypatch.setattr(decoding, "_FULL_SIZE_PIXELS", 1_000_000)
    with Image.open(tmp_path / "rgb.png") as opened:
        assert decoding.load_within_budget(opened, (512, 512)).size == (600, 550)  # halved: still at least 512 x 512
    assert full["exif6.png"][1] == 1100 / 1200 and full["lzw.tiff"][1] == 1100 / 1200  # upright
    for name in photos:
        image, aspect = decoding.decode_image(tmp_path / name)
        assert abs(aspect - full[name][1]) < 0.005, name
        assert np.abs(image.astype(int) - full[name][0]).mean() < 4, name


def test_threads_decode_bombs_and_photos_independently(tmp_path: Path, ordinary: list[Path]) -> None:
    # No limit is a module-wide setting: threads decoding bombs and photos at once each get their own answer.
    photos = ordinary[:6]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(40000, 40000))
    expected = {p: decoded_digest(p) for p in photos}
    limit = Image.MAX_IMAGE_PIXELS

    def one(path: Path) -> str:
        try:
            return decoded_digest(path)
        except decoding.UnreadableImageError as exc:
            return str(exc)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, [bomb, *photos] * 4))
    for path, result in zip([bomb, *photos] * 4, results, strict=True):
        assert result == expected.get(path, f"{bomb}: cannot read image (DecompressionBombError: 40000x40000 "
                                              "pixels declared, more than the limit of 1,073,741,824: a "
                                              "decompression bomb)")
    assert Image.MAX_IMAGE_PIXELS == limit
