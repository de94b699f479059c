"""Frozen features once per (image, variant), cached on disk under a key of everything that decides them."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import appdirs
import numpy as np
import torch
import torchvision
from tqdm import tqdm

from samespace import backbones, decoding, outputs, pair_sampling, preprocess, sharding

# --------------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------------

log = logging.getLogger("samespace.feature_cache")
DEFAULT_CACHE_DIR = Path(appdirs.user_cache_dir("samespace")) / "features"  # shared by training and evaluation


def pair_rows(pairs: pair_sampling.PairSet, width: int = preprocess.N_VARIANTS) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a flattened feature table (``image * width + variant``) for each pair's two images.

    Decodes the pair flags as :class:`pair_dataset.DuplicateImageDataset` does: variant 1 low bits, variant 2 high.
    ``width``: variants (or views) per image in the table.
    """
    variant1, variant2 = pair_sampling.pair_variants(pairs.flags)
    first = pairs.left * width + variant1
    second = pairs.right * width + variant2
    return first, second


# A view turns a batch of decoded images into backbone inputs: ``view(images, variant, indices)`` gets uint8
# images ``(B, H, W, 3)``, one view id and the images' indices in the split ``(B,)`` (for views that differ
# per image, e.g. seeded random crops), and returns float ``(B, 3, H, W)`` in [0, 1] (the extractor normalises).
ViewFn = Callable[[np.ndarray, int, np.ndarray], torch.Tensor]
# The images of a split: decoded uint8 ``(N, H, W, 3)``, or image files decoded in batches (never all at once).
ImageSource = np.ndarray | Sequence[str | Path]


def variant_view(images: np.ndarray, variant: int, indices: np.ndarray) -> torch.Tensor:
    """The published views: variant ``variant`` (a flip / rotation mask) of every image, the same for all."""
    return preprocess.to_model_input(images, variant)


def transform_identity(view: ViewFn = variant_view) -> str:
    """What the cached features depend on besides images and weights: the preprocessing code and versions."""
    parts = [inspect.getsource(preprocess.to_model_input), inspect.getsource(preprocess.apply_variant),
             inspect.getsource(preprocess.normalise), repr(preprocess.ROTATION_DEGREES),
             torch.__version__, torchvision.__version__]
    if view is not variant_view:  # keeps the keys of existing cache files for the published views
        parts.append(_code_identity(view))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _code_identity(function: Callable) -> str:
    """Source (or qualified name) of a function, with the arguments bound by functools.partial."""
    if isinstance(function, functools.partial):
        return _code_identity(function.func) + repr((function.args, sorted(function.keywords.items())))
    if callable(getattr(function, "identity", None)):  # e.g. views.ReshootViews: its code and parameters
        return function.identity()
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', repr(function))}"


def _content_digest(images: ImageSource) -> tuple[hashlib._Hash, dict]:
    """Digest of the images' content: the decoded pixels, or the files' bytes plus the decoding code."""
    digest = hashlib.sha256()
    if isinstance(images, np.ndarray):
        digest.update(np.ascontiguousarray(images).data)
        return digest, {"shape": list(images.shape), "dtype": str(images.dtype)}
    for path in images:
        content = Path(path).read_bytes()
        digest.update(len(content).to_bytes(8, "little"))
        digest.update(content)
    decoder_source = inspect.getsource(decoding.decode_image) + repr(decoding.IMAGE_SIZE)
    decoder = hashlib.sha256(decoder_source.encode()).hexdigest()
    return digest, {"files": len(images), "decoder": decoder}


def feature_cache_key(
    extractor: backbones.FrozenFeatureExtractor,
    images: ImageSource,
    variants: Sequence[int],
    view: ViewFn = variant_view,
) -> str:
    """Hash of image content (pixels, or file bytes), backbone and weights identity, views and transform version."""
    content, described = _content_digest(images)
    meta = {"extractor": extractor.fingerprint(), "transform": transform_identity(view),
            "variants": list(variants), **described}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    digest.update(content.digest())
    return digest.hexdigest()


def _read_cache(path: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        features = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: recompute rather than fail
        log.warning("ignoring unreadable feature cache %s (%s)", path, exc)
        return None
    if not isinstance(features, torch.Tensor) or tuple(features.shape) != shape:
        log.warning("ignoring feature cache %s: unexpected content", path)
        return None
    return features


def _write_cache(path: Path, features: torch.Tensor) -> bool:
    """Write atomically (safe for parallel trials on one node sharing the cache folder).

    The cache only saves time: a folder that cannot be written (read-only, full disk) is one warning, and the
    run goes on with the features it just computed. Returns whether the file was written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Streamed to the file: a BytesIO and its getvalue() would add two copies of the table to the peak.
        outputs.atomic_write(path, lambda f: torch.save(features, f))
    except OSError as exc:
        warnings.warn(f"feature cache not written: {path} ({exc.strerror or exc})", stacklevel=2)
        return False
    return True


def _decoded(images: ImageSource, rows: np.ndarray) -> np.ndarray:
    """uint8 ``(len(rows), H, W, 3)`` of some images: sliced, or decoded from their files now."""
    if isinstance(images, np.ndarray):
        return images[rows[0] : rows[-1] + 1] if len(rows) else images[:0]
    return np.stack([decoding.load_image(images[int(k)]) for k in rows])


@torch.no_grad()
def to_device(batch: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``batch`` on ``device``. To a GPU through pinned (page-locked) memory with a non-blocking copy, so the copy
    runs by DMA while the CPU prepares the next batch; elsewhere a plain ``.to`` (pinning needs CUDA)."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def extract_features(
    extractor: backbones.FrozenFeatureExtractor,
    images: ImageSource,
    variants: Sequence[int] = range(preprocess.N_VARIANTS),
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
    cache_dir: str | Path | None = None,
    view: ViewFn = variant_view,
    shard: sharding.Shard | None = None,
) -> torch.Tensor:
    """Pooled features of every (image, view): float32 CPU tensor ``(N, len(variants), out_dim)``.

    ``images`` are decoded uint8 ``(N, H, W, 3)`` or N image files; files are decoded ``batch_size`` at a
    time with :func:`decoding.load_image` and the pixels dropped once their views are extracted, so memory holds
    the feature table and one batch of pixels, never a whole split. ``view(batch, variant, indices)`` makes
    the backbone inputs of each view id in ``variants`` (default: the published 8 flip / rotation variants,
    :func:`variant_view`); plug in other views without touching this loop.

    ``shard``: in a distributed run each rank extracts its contiguous share of the images and the shares
    are gathered, so every rank returns the whole table (``sharding.gather_rows``). With ``cache_dir`` the
    table is read from / written to ``<cache_dir>/<backbone>-<key>.pt`` (:func:`feature_cache_key`); all
    ranks read it only if every rank finds it, only the chief writes it, and the others wait for the write.
    Moves ``extractor`` to ``device``.
    """
    shard = shard or sharding.Shard()
    variants = list(variants)
    shape = (len(images), len(variants), extractor.out_dim)
    path = None
    if cache_dir is not None:
        key = feature_cache_key(extractor, images, variants, view)
        path = Path(cache_dir) / f"{extractor.backbone}-{key[:32]}.pt"
        cached = _read_cache(path, shape)
        if sharding.all_true(cached is not None, shard):
            log.info("feature cache hit: %s", path)
            return cached
    extractor.to(device)
    mine = shard.indices(shape[0])
    local = torch.empty((len(mine), *shape[1:]), dtype=torch.float32)
    with tqdm(total=len(mine) * shape[1], desc=f"{extractor.backbone} features", unit="img",
              disable=not (progress and shard.is_chief)) as bar:
        for start in range(0, len(mine), batch_size):
            rows = mine[start : start + batch_size]
            batch = _decoded(images, rows)
            for k, variant in enumerate(variants):
                inputs = to_device(view(batch, variant, rows), device)
                local[start : start + len(rows), k] = extractor(inputs).float().cpu()
                bar.update(len(rows))
            del batch  # the pixels of this batch are done
    features = sharding.gather_rows(local, shape[0], shard)
    del local
    if path is not None:
        if shard.is_chief and _write_cache(path, features):
            log.info("feature cache written: %s", path)
        sharding.barrier(shard)  # the others continue once the file is complete
    return features
