"""The Siamese network: two trainable twin heads on the frozen pooled features, an MLP (or a cosine head) on
their concatenation, one logit per pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from samespace import backbones

HEADS = ("concat", "cosine")
TWIN_DIM = 1280
TWIN_DROPOUT = 0.2  # MobileNetV3's own classifier dropout, kept in the twin heads as published
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
        self.features = backbones.build_feature_extractor(backbone, backbone_weights, pooling)
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


def network_from_hparams(hparams: Mapping[str, Any], load_backbone_weights: bool = True) -> SiameseNetwork:
    """The network a trial's hyperparameters describe (the published and improved ones filled in by the caller).

    ``load_backbone_weights=False`` builds the backbone without its pretrained weights, for when a checkpoint
    brings every weight.
    """
    return SiameseNetwork(
        backbone=hparams["backbone"],
        backbone_weights=hparams["backbone_weights"] if load_backbone_weights else "none",
        dropout1=hparams["dropout1"],
        dropout2=hparams["dropout2"],
        dropout3=hparams["dropout3"],
        tie_twins=bool(hparams["tie_twins"]),
        head=hparams["head"],
        pooling=hparams["pooling"],
        head_rank=int(hparams["head_rank"]),
    )
