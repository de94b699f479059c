"""Reading and decoding photos: bounded reads, decompression-bomb limits, decode once to 256x256 uint8."""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from samespace import image_formats

IMAGE_SIZE = 256

class UnreadableImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, empty, too large, not an image, not a regular
    file), with the file's path and the reason."""

# --------------------------------------------------------------------------------------------
# Images: decode once, keep uint8, normalise when a tensor is produced
# --------------------------------------------------------------------------------------------


# The limits that keep a hostile or huge file from exhausting memory. They are checked by open_image and
# load_within_budget on each image, not through PIL's module-wide Image.MAX_IMAGE_PIXELS: photos are decoded in
# threads (find_duplicates), and a global limit cannot be raised for one photo without racing the others.
MAX_PHOTO_BYTES = 1 << 30
"""A photo file above this size is refused before it is read (its bytes are held in memory, hashed and decoded)."""
MAX_DECLARED_PIXELS = 1 << 30
"""Dimensions declared above this (about 32768 x 32768) are a decompression bomb, whatever the format: more than
any camera or single-file panorama, and too much to decode in reasonable time even at JPEG's 1/8 scale."""
MAX_DECODE_PIXELS = 1 << 27
"""The largest raster decoded at full size, for formats that cannot decode at a smaller scale (PNG, TIFF, WebP
...): PIL holds at most 4 bytes a pixel, so 512 MiB. A 100-megapixel camera's TIFF fits; a PNG declaring
20000 x 20000 does not. A JPEG is drafted to at most 1/8 scale first and always fits."""
_FULL_SIZE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
"""PIL's default MAX_IMAGE_PIXELS, above which photos used to be refused: a raster up to it decodes exactly as
it always did (the thresholds are calibrated on those pixels); a larger one is box-reduced as soon as it is
loaded, so that the conversions after it copy a small image, not the full raster."""


def file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"))
    return next((kind for test, kind in kinds if test(mode)), "special file")


def _check_regular(path: str | Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableImageError(f"{path}: not a regular file ({file_kind(info.st_mode)})")
    if info.st_size > MAX_PHOTO_BYTES:
        raise UnreadableImageError(f"{path}: file too large ({info.st_size:,} bytes; the limit is {MAX_PHOTO_BYTES:,})")


def read_photo(path: str | Path) -> tuple[bytes, os.stat_result]:
    """The bytes of one photo and the ``fstat`` of the descriptor they were read from, taken before reading.

    Only a regular file (or a symlink to one) of at most MAX_PHOTO_BYTES is read; anything else raises
    :class:`UnreadableImageError` naming the file: a FIFO would block its reader forever and a device never
    ends. The file is opened read-only and non-blocking and checked on the open descriptor, so a file swapped
    for a FIFO after it was listed is refused too, never waited on.
    """
    try:
        # a device is refused before it is opened: opening one can act (a tape rewinds, a modem hangs up)
        _check_regular(path, os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UnreadableImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    try:
        info = os.fstat(fd)
        _check_regular(path, info)
        os.set_blocking(fd, True)  # a regular file: ordinary reads (a network file system may honour O_NONBLOCK)
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_PHOTO_BYTES:  # usually one read of the whole file, then the empty read at its end
            chunk = os.read(fd, min(max(info.st_size + 1 - total, 1 << 16), MAX_PHOTO_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise UnreadableImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    finally:
        os.close(fd)
    if total > MAX_PHOTO_BYTES:  # it grew while being read
        raise UnreadableImageError(f"{path}: file too large (over {MAX_PHOTO_BYTES:,} bytes)")
    return b"".join(chunks), info


def open_image(path: str | Path, content: bytes) -> ImageFile.ImageFile:
    """Identify the image in ``content`` (the bytes of ``path``), as ``PIL.Image.open`` does, without loading
    its pixels, and refuse dimensions above MAX_DECLARED_PIXELS (a decompression bomb).

    PIL.Image.open also refuses every image above twice its global MAX_IMAGE_PIXELS (~179 megapixels) and
    warns above it, before a JPEG could be drafted to 1/8 scale; raising that global for one photo would race
    the other decoding threads. So this tries PIL's registered format plugins itself, in Image.open's order,
    and applies this module's limits instead. Raises ``PIL.UnidentifiedImageError`` when no format matches.
    """
    image_formats.enable_heif()
    fp = io.BytesIO(content)
    prefix = content[:16]
    Image.preinit()
    tried: set[str] = set()
    notes: list[str] = []
    for load_all in (False, True):
        if load_all:
            Image.init()
        for fmt in [f for f in Image.ID if f not in tried]:
            tried.add(fmt)
            factory, accept = Image.OPEN[fmt]
            try:
                accepted = not accept or accept(prefix)
                if isinstance(accepted, str):  # the format's reason it will not read this file
                    notes.append(accepted)
                    continue
                if not accepted:
                    continue
                fp.seek(0)
                img = factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue  # not this format after all, as Image.open decides
            if img.width * img.height > MAX_DECLARED_PIXELS:
                img.close()
                raise Image.DecompressionBombError(
                    f"{img.width}x{img.height} pixels declared, more than the limit of {MAX_DECLARED_PIXELS:,}: "
                    "a decompression bomb"
                )
            return img
    raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}" + "".join(f" ({n})" for n in notes))


def load_within_budget(img: ImageFile.ImageFile, target: tuple[int, int]) -> Image.Image:
    """Load an opened (and, for JPEG, drafted) image within MAX_DECODE_PIXELS. A raster above
    _FULL_SIZE_PIXELS is turned upright and box-reduced to no less than ``target`` right away, so the caller's
    conversions copy a small image; any other is returned as it is, loaded."""
    width, height = img.size
    if width * height > MAX_DECODE_PIXELS:
        raise Image.DecompressionBombError(
            f"{width}x{height} pixels to decode at full size ({img.format} cannot decode at a smaller scale), "
            f"more than the budget of {MAX_DECODE_PIXELS:,}"
        )
    img.load()
    if width * height <= _FULL_SIZE_PIXELS:
        return img
    ImageOps.exif_transpose(img, in_place=True)  # before reducing: a reduced copy no longer carries TIFF's tags
    factor = min(img.width // target[0], img.height // target[1])
    if factor < 2:
        return img
    if img.mode in ("1", "P", "PA") or img.mode.startswith("I;16"):  # modes a box filter cannot average
        return to_rgb(img).reduce(factor)
    return img.reduce(factor)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16/32-bit greys are rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(img)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        arr = np.empty(values.shape, np.uint8)
        for row in range(0, values.shape[0], 1024):  # in strips: float64 temporaries of a whole raster take GBs
            strip = values[row : row + 1024].astype(np.float64)
            arr[row : row + 1024] = np.clip(strip / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("PA", "LA", "RGBA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(path: str | Path, size: int = IMAGE_SIZE, content: bytes | None = None) -> tuple[np.ndarray, float]:
    """Decode one photo to a ``size x size x 3`` uint8 array (EXIF orientation, RGB, antialiased resize) and the
    photo's aspect ratio (width / height, upright) before the resize squashed it to a square.

    This is the single decoding path of the project (training, evaluation, duplicate finding); the aspect ratio
    is for spatial verification (verification.py), which compares shapes. ``content`` is the file's bytes when
    the caller has read them (:func:`read_photo`), e.g. to hash the very bytes it decodes; otherwise the file is
    read here. Photos above PIL's pixel limit decode too (JPEG at a reduced scale, others within
    MAX_DECODE_PIXELS); a decompression bomb is refused.
    Raises :class:`UnreadableImageError` naming the file when it cannot be decoded.
    """
    try:
        if content is None:
            content, _ = read_photo(path)
        with warnings.catch_warnings():
            # For quiet output only (catch_warnings is not thread-safe, and find_duplicates decodes in threads;
            # no limit depends on it): PIL skips a damaged EXIF tag with a warning naming no file, and its TIFF
            # and GIF loaders warn about rasters over its own limit that are within MAX_DECODE_PIXELS.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image(path, content) as img:
                # JPEG can decode at 1/2, 1/4, 1/8 scale for free; keep at least 2x the target.
                img.draft("RGB", (2 * size, 2 * size))
                img = load_within_budget(img, (2 * size, 2 * size))
                img = ImageOps.exif_transpose(img)
                img = to_rgb(img)
                aspect = img.width / img.height
                img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
                return np.asarray(img, dtype=np.uint8).copy(), aspect
    except UnreadableImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file breaks decoders in many ways (struct.error in EXIF,
        # IndexError, ZeroDivisionError ...): every reader skips it here, with the same reason
        raise UnreadableImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def load_image(path: str | Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """The decoded ``size x size x 3`` uint8 photo of :func:`decode_image`."""
    return decode_image(path, size)[0]


def skipped_folders(folders: Sequence[tuple[Path, str]]) -> list[str]:
    """``find_images``'s unreadable entries as skipped messages (``<path>: <reason>``), one warning each."""
    messages = [f"{folder}: {reason}" for folder, reason in folders]
    for message in messages:
        warnings.warn(f"skipped {message}", stacklevel=2)
    return messages


def load_images(paths: Sequence[Path], progress: bool = True) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode many photos. Returns (uint8 array N x S x S x 3, indices of kept paths, skipped messages).

    An unreadable file is skipped with one warning naming it; it never stops the run.
    """
    images, _, kept, skipped = decode_images(paths, progress)
    return images, kept, skipped


def decode_images(
    paths: Sequence[Path], progress: bool = True
) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """:func:`load_images` with each kept photo's aspect ratio: (images, aspects (N,) float64, kept, skipped)."""
    images: list[np.ndarray] = []
    aspects: list[float] = []
    kept: list[int] = []
    skipped: list[str] = []
    for k, path in enumerate(tqdm(paths, desc="decode images", unit="img", disable=not progress)):
        try:
            image, aspect = decode_image(path)
        except UnreadableImageError as exc:
            warnings.warn(f"skipped {exc}", stacklevel=3)
            skipped.append(str(exc))
            continue
        images.append(image)
        aspects.append(aspect)
        kept.append(k)
    stacked = np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return stacked, np.array(aspects, np.float64), kept, skipped






