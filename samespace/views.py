"""Re-shoot views: photo-realistic random transforms of an image, as if the space were photographed again.

The improved recipe (hyperparameter ``views: reshoot``) trains on ``n_views`` (<= :data:`N_VIEWS`) views per
image, computed once into the feature cache
(``feature_cache.extract_features(..., view=ReshootViews(seed))``). View 0 is the
plain image; views 1.. are random re-shoots, each a pure function of (seed, image index, view), so a cache
file and a training run are reproducible:

- crop and zoom to 50-95 % of the area (aspect 3:4 .. 4:3), rotation up to +/- 25 degrees (half of the time
  zoomed in so no black corner shows) and a perspective (viewpoint) warp moving each corner by up to 8 % of
  the side, all as one projective resampling;
- exposure, contrast, saturation, white balance (per-channel gain) and gamma;
- Gaussian blur (half of the views), downscale and re-upscale (a third), JPEG quality 30-95.

Positives and negatives draw their views from the same distribution (see ``mining.py``), so the views
carry no label information (the published protocol's shortcut, see README).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from samespace import preprocess

N_VIEWS = preprocess.N_VARIANTS  # 8: a pair's flags keep one view per image in 3 bits, as the published variants
MAX_ROTATION = 25.0
AREA = (0.5, 0.95)


# Not cv2.getPerspectiveTransform: it takes float32 points only (5e-8 from this float64 solve), and this code's
# source is part of the feature cache's identity (ReshootViews.identity).
def four_point_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking 4 points ``src`` to ``dst`` (each (4, 2))."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    return np.append(np.linalg.solve(np.asarray(rows, float), np.asarray(rhs, float)), 1.0).reshape(3, 3)


def _camera(rng: np.random.Generator) -> np.ndarray:
    """Where the output frame's corners land in the input, in grid_sample coordinates ([-1, 1]), as a homography.

    A crop window of 50-95 % of the area (aspect 3:4 .. 4:3) at a random place, rotated by up to 25 degrees
    about its centre (half of the time shrunk so that it stays inside the rotated frame: no black corners),
    each corner then moved by up to 8 % of the side (a change of viewpoint).
    """
    area = rng.uniform(*AREA)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    half_w, half_h = min(1.0, math.sqrt(area * aspect)), min(1.0, math.sqrt(area / aspect))
    cx, cy = rng.uniform(-1 + half_w, 1 - half_w), rng.uniform(-1 + half_h, 1 - half_h)
    angle = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    if rng.random() < 0.5:
        a = abs(angle)
        corners /= math.cos(a) + math.sin(a) * max(half_w / half_h, half_h / half_w)
    c, s = math.cos(angle), math.sin(angle)
    corners = corners @ np.array([[c, s], [-s, c]]) + [cx, cy]
    if rng.random() < 0.7:
        corners += rng.uniform(-0.16, 0.16, corners.shape)
    frame = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    return four_point_homography(frame, corners)


def reshoot(images: torch.Tensor, rngs: list[np.random.Generator]) -> torch.Tensor:
    """A random re-shoot of each [0, 1] float image of a batch ``(B, 3, H, W)``, one generator per image."""
    b, _, h, w = images.shape
    # Geometry: crop / zoom, rotation and viewpoint as one projective resampling per image (one interpolation).
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h, dtype=torch.float64),
                            torch.linspace(-1 + 1 / w, 1 - 1 / w, w, dtype=torch.float64), indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    grids = []
    for rng in rngs:
        mapped = points @ torch.from_numpy(_camera(rng)).T
        grids.append((mapped[:, :2] / mapped[:, 2:]).reshape(h, w, 2))
    x = F.grid_sample(images, torch.stack(grids).float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    # Photometry: exposure, contrast, saturation, white balance, gamma (per image, vectorised).
    def per_image(low: float, high: float, k: int = 1) -> torch.Tensor:
        return torch.tensor(np.array([rng.uniform(low, high, k) for rng in rngs]), dtype=x.dtype)[:, :, None, None]

    x = x * per_image(0.7, 1.3)
    grey = TF.rgb_to_grayscale(x)
    x = grey.mean((-2, -1), keepdim=True) + (x - grey.mean((-2, -1), keepdim=True)) * per_image(0.7, 1.3)
    grey = TF.rgb_to_grayscale(x)
    x = grey + (x - grey) * per_image(0.7, 1.3)
    x = (x * per_image(0.92, 1.08, 3)).clamp(0, 1)
    x = x.pow(per_image(-0.25, 0.25).exp())
    # Optics and compression: blur (half), downscale (a third), JPEG quality 30-95 (all).
    out = []
    for image, rng in zip(x, rngs, strict=True):
        if rng.random() < 0.5:
            sigma = float(rng.uniform(0.3, 1.6))
            image = TF.gaussian_blur(image, [2 * math.ceil(2 * sigma) + 1] * 2, [sigma, sigma])
        if rng.random() < 0.33:
            scale = float(rng.uniform(0.3, 0.7))
            small = TF.resize(image, [max(16, int(h * scale)), max(16, int(w * scale))], antialias=True)
            image = TF.resize(small, [h, w], antialias=True)
        quantised = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        out.append(TF.jpeg(quantised, int(rng.integers(30, 96))))
    return torch.stack(out).float() / 255.0


class ReshootViews:
    """``views(batch, view, image_indices)``: view ``view`` of each image of a uint8 batch, as [0, 1] floats
    (a :data:`feature_cache.ViewFn`).

    View 0 is :func:`preprocess.to_model_input` of the image (no transform); view k >= 1 of image i is
    :func:`reshoot` with a generator seeded by (seed, i, k), so it does not depend on batching.
    """

    def __init__(self, seed: int = 0, n_views: int = N_VIEWS) -> None:
        if not 1 <= n_views <= N_VIEWS:
            raise ValueError(f"n_views must be in 1..{N_VIEWS}, got {n_views}")
        self.seed = seed
        self.n_views = n_views

    def __call__(self, images: np.ndarray, view: int, indices: np.ndarray) -> torch.Tensor:
        x = preprocess.to_model_input(images)
        if view == 0:
            return x
        return reshoot(x, [np.random.default_rng([self.seed, int(i), int(view)]) for i in indices])

    def identity(self) -> str:
        """What views depend on (for the feature-cache key): this module's transform code and the seed."""
        code = [inspect.getsource(f) for f in (four_point_homography, _camera, reshoot, ReshootViews.__call__)]
        return "\n".join([*code, repr((self.seed, self.n_views, torch.__version__))])
