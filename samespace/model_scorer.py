"""The trained Siamese network as a pair scorer.

The concatenation head is not symmetric, so a pair's score is ``sigmoid((logit(a, b) + logit(b, a)) / 2)``,
computed from ``SiameseNetwork.project`` once per image and ``logits_from_projections`` per pair.
"""

from __future__ import annotations

import numpy as np
import torch

from samespace import scorers
from samespace.store_format import FieldSpec


@torch.no_grad()
def model_projections(
    model: torch.nn.Module, pooled: torch.Tensor, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Siamese head's first layer split per image: ``(as_first, as_second)``, each (N, hidden), on the CPU."""
    first, second = model.project(pooled.to(device))
    return first.float().cpu(), second.float().cpu()


@torch.no_grad()
def model_pair_scores(
    model: torch.nn.Module,
    first: torch.Tensor,
    second: torch.Tensor,
    left: np.ndarray,
    right: np.ndarray,
    batch_size: int = 4096,
    device: str = "cpu",
) -> np.ndarray:
    """Symmetric model score of pairs (left[k], right[k]): ``sigmoid((logit(a, b) + logit(b, a)) / 2)``.

    ``first`` / ``second`` come from :func:`model_projections`; only the rest of the head runs per pair,
    in batches of ``batch_size`` pairs. The model must be in eval mode (no dropout).
    """
    out = np.empty(len(left), dtype=np.float64)
    for start in range(0, len(left), batch_size):
        i = torch.as_tensor(left[start : start + batch_size], dtype=torch.long)
        j = torch.as_tensor(right[start : start + batch_size], dtype=torch.long)
        ab = model.logits_from_projections(first[i].to(device), second[j].to(device))
        ba = model.logits_from_projections(first[j].to(device), second[i].to(device))
        out[start : start + len(i)] = torch.sigmoid((ab.float() + ba.float()) / 2).cpu().numpy()
    return out

class ModelScorer(scorers.PairScorer):
    """The Siamese network: per image its head projections (and unit pooled features for candidate search)."""

    name = "model"

    def __init__(
        self, model: torch.nn.Module, batch_size: int = 64, device: str = "cpu", pair_batch_size: int = 4096
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.batch_size = batch_size
        self.pair_batch_size = pair_batch_size
        self.device = device
        self.vectors = np.zeros((0, 0), np.float32)
        self.first = torch.zeros(0)
        self.second = torch.zeros(0)
        self._second_on_device: torch.Tensor | None = None  # moved to the model's device once, when first scored

    def backbone(self) -> torch.nn.Module:
        return self.model.features

    @property
    def fields(self) -> dict[str, FieldSpec]:  # type: ignore[override]
        # concatenation head: each image's share of the first classifier layer; cosine head: unit projections
        if getattr(self.model, "head_kind", "concat") == "cosine":
            projection = scorers.unit_vectors(self.model.features)
        else:
            layer = getattr(getattr(self.model, "classifier", [None])[0], "out_features", None)
            projection = FieldSpec("float32", None if layer is None else (layer,))
        return {"vectors": scorers.unit_vectors(self.model.features), "first": projection, "second": projection}

    def _embed(self, images: np.ndarray, aspects: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        pooled = scorers.pooled_features(self.model.features, images, self.batch_size, self.device)
        first, second = model_projections(self.model, pooled, self.device)
        return scorers.l2_normalise(pooled), first, second

    def _as_fields(self, part: tuple[np.ndarray, torch.Tensor, torch.Tensor]) -> dict[str, np.ndarray]:
        return {"vectors": part[0], "first": part[1].numpy(), "second": part[2].numpy()}

    def _from_fields(self, fields: dict[str, np.ndarray]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        return fields["vectors"], torch.from_numpy(fields["first"]), torch.from_numpy(fields["second"])

    def finish(self) -> None:
        if self._parts:
            vectors, first, second = zip(*self._parts, strict=True)
            self.vectors = np.concatenate(vectors)
            self.first, self.second = torch.cat(first), torch.cat(second)
        self._parts = []
        self._second_on_device = None

    def score(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return model_pair_scores(
            self.model, self.first, self.second, left, right, batch_size=self.pair_batch_size, device=self.device
        )

    @torch.no_grad()
    def score_rows(self, start: int, stop: int) -> np.ndarray | None:
        """The cosine head scores a block of pairs as one matrix product; the concatenation head cannot."""
        if getattr(self.model, "head_kind", "concat") != "cosine":
            return None
        # The projections are kept on the CPU; the head's scale and bias live on the model's device.
        if self._second_on_device is None:
            self._second_on_device = self.second.to(self.device)
        logits = self.model.head.similarity_matrix(self.first[start:stop].to(self.device), self._second_on_device)
        return torch.sigmoid(logits.double()).cpu().numpy()

    def search_vectors(self) -> np.ndarray:
        return self.vectors
