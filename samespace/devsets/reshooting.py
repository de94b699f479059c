"""Re-shoot transforms: a photo as another photographer might have taken it again (crop and zoom, perspective
warp, rotation, exposure, white balance, contrast, blur, downscale, JPEG quality), and reading a source photo."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from samespace import decoding
from samespace.devsets import photo_sources

MAX_SIDE = 640  # longest side of a written photo (before a re-shoot's extra downscale)

# Re-shoot transform ranges (documented in the README; the tests check every manifest row against them).
CROP_SCALE = (0.5, 0.95)  # kept fraction of each side (crop and zoom)
PERSPECTIVE = 0.12  # largest corner shift, as a fraction of the side (viewpoint change)
ROTATION = 25.0  # degrees, both ways; the rotated photo is cropped to its largest upright rectangle
EXPOSURE_EV = 0.8  # brightness factor 2^U(-EV, EV)
WHITE_BALANCE = 0.12  # red and blue gains 1 +/- this
CONTRAST = (0.7, 1.35)
BLUR_RADIUS = (0.4, 1.8)  # Gaussian, in pixels of the 640-pixel photo
DOWNSCALE = (0.35, 0.8)  # longest side becomes this fraction of MAX_SIDE
JPEG_QUALITY = (35, 95)


def open_rgb(path: Path) -> Image.Image:
    """A source photo as 8-bit RGB (EXIF orientation applied, transparency on white, as decoding.load_image)."""
    try:
        with Image.open(path) as img:
            img.load()
            return decoding.to_rgb(ImageOps.exif_transpose(img))  # the project's one mode conversion
    except (OSError, ValueError, SyntaxError) as exc:
        raise photo_sources.RealPhotosError(f"{path}: cannot read photo ({type(exc).__name__}: {exc})") from exc


def fit(img: Image.Image, side: int) -> Image.Image:
    """The photo shrunk (LANCZOS) so that its longest side is at most ``side``."""
    scale = side / max(img.size)
    if scale >= 1:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


# Not cv2.getPerspectiveTransform(dst, src): it takes float32 points only, so its coefficients differ by up to
# 8e-6 and every perspective-warped photo of a built set by +-1 grey level in some pixels.
def perspective_coefficients(src: np.ndarray, dst: np.ndarray) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output corners ``dst`` to input corners ``src``."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(rows, float), src.reshape(-1).astype(float)).tolist()


def rotated_crop(img: Image.Image, degrees: float) -> Image.Image:
    """Rotate and keep the largest upright rectangle of the original aspect ratio (no black corners)."""
    w, h = img.size
    a = abs(np.deg2rad(degrees))
    # Largest w' x h' with w'/h' = w/h inside the rotated w x h rectangle.
    scale = min(w / (w * np.cos(a) + h * np.sin(a)), h / (w * np.sin(a) + h * np.cos(a)))
    rotated = img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)
    cw, ch = w * scale, h * scale
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return rotated.crop(tuple(round(b) for b in box))


def reshoot(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int, dict[str, float]]:
    """A random re-shoot of a photo: returns (image, JPEG quality, parameters as recorded in the manifest).

    Each step is applied with its own probability; every parameter lies in the ranges defined above.
    Order: viewpoint (perspective), rotation, crop and zoom, exposure, white balance, contrast, blur, downscale.
    """
    params: dict[str, float] = {}
    w, h = img.size
    side = max(w, h)
    if rng.random() < 0.5:
        shift = rng.uniform(-PERSPECTIVE, PERSPECTIVE, size=(4, 2)) * np.array([w, h])
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
        # Move the input corners inwards only, so the output has no empty border.
        inward = np.abs(shift) * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
        coefficients = perspective_coefficients(corners + inward, corners)
        img = img.transform((w, h), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC)
        params["perspective"] = round(float(np.abs(shift).max() / max(w, h)), 4)
    if rng.random() < 0.5:
        degrees = float(rng.uniform(-ROTATION, ROTATION))
        img = rotated_crop(img, degrees)
        params["rotation"] = round(degrees, 3)
    if rng.random() < 0.85:
        scale = float(rng.uniform(*CROP_SCALE))
        cw, ch = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        x0, y0 = int(rng.integers(0, img.width - cw + 1)), int(rng.integers(0, img.height - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
        params["crop_scale"] = round(scale, 4)
    img = img.resize(upscaled(img.size, side), Image.Resampling.BICUBIC)  # zoom: the crop fills the frame again
    if rng.random() < 0.7:
        ev = float(rng.uniform(-EXPOSURE_EV, EXPOSURE_EV))
        img = ImageEnhance.Brightness(img).enhance(2.0**ev)
        params["exposure_ev"] = round(ev, 4)
    if rng.random() < 0.5:
        red, blue = (float(g) for g in rng.uniform(1 - WHITE_BALANCE, 1 + WHITE_BALANCE, size=2))
        arr = np.asarray(img, np.float32) * np.array([red, 1.0, blue], np.float32)
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
        params["wb_red"], params["wb_blue"] = round(red, 4), round(blue, 4)
    if rng.random() < 0.5:
        factor = float(rng.uniform(*CONTRAST))
        img = ImageEnhance.Contrast(img).enhance(factor)
        params["contrast"] = round(factor, 4)
    if rng.random() < 0.3:
        radius = float(rng.uniform(*BLUR_RADIUS))
        img = img.filter(ImageFilter.GaussianBlur(radius))
        params["blur"] = round(radius, 4)
    if rng.random() < 0.35:
        fraction = float(rng.uniform(*DOWNSCALE))
        img = fit(img, max(16, round(MAX_SIDE * fraction)))
        params["downscale"] = round(fraction, 4)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    params["jpeg_quality"] = quality
    return img, quality, params


def upscaled(size: tuple[int, int], side: int) -> tuple[int, int]:
    """A size scaled so that its longest side is ``side``."""
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


# Edited copies of one photo (the match tiers' "same photo"): samespace.tiers is specified and measured on these.
COPY_EDITS = ("resize50", "q40", "crop80", "gray", "rot10")


def edited_copy(img: Image.Image, kind: str) -> Image.Image:
    """An edited copy of an RGB photo: ``resize50`` (half each side), ``q40`` (JPEG quality 40), ``crop80`` (the
    central 80 % of each side), ``gray`` (grayscale, as RGB) or ``rot10`` (10 degrees, same size)."""
    w, h = img.size
    if kind == "resize50":
        return img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)
    if kind == "q40":
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=40)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "crop80":
        cw, ch = int(w * 0.8), int(h * 0.8)
        return img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
    if kind == "gray":
        return ImageOps.grayscale(img).convert("RGB")
    if kind == "rot10":
        return img.rotate(10, resample=Image.Resampling.BICUBIC)
    raise ValueError(f"unknown edit {kind!r} (choose from {COPY_EDITS})")
