"""The Determined pieces of the trial: the pair-row dataset, the metric reducer, the run log, the resumable
loader, and the error a diverging run stops with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from determined import pytorch

from samespace import pair_sampling, preprocess
from samespace.feature_cache import pair_rows


class DivergedError(RuntimeError):
    """Training whose loss or weights became NaN or infinite: stopped before any checkpoint holds them."""


class PairRows(torch.utils.data.Dataset):
    """A split's pairs as ``(row1, row2, label)``: rows of its feature table (``image * width + variant``)."""

    def __init__(self, pairs: pair_sampling.PairSet, width: int = preprocess.N_VARIANTS) -> None:
        first, second = pair_rows(pairs, width)
        self.first = torch.from_numpy(first)
        self.second = torch.from_numpy(second)
        self.label = torch.from_numpy(pairs.label.astype(np.float32))

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.first[k], self.second[k], self.label[k]


class RunLog(pytorch.PyTorchCallback):
    """What a run produced: per-batch training metrics, validation metrics, the last checkpoint."""

    def __init__(self) -> None:
        self.training: list[dict[str, Any]] = []
        self.validation: list[dict[str, Any]] = []
        self.checkpoint_dir: str | None = None
        self.checkpoint_uuid: str | None = None

    def on_training_workload_end(self, avg_metrics: dict[str, Any], batch_metrics: list[dict[str, Any]]) -> None:
        self.training.extend(batch_metrics)

    def on_validation_end(self, metrics: dict[str, Any]) -> None:
        self.validation.append(metrics)

    def on_checkpoint_write_end(self, checkpoint_dir: str) -> None:
        self.checkpoint_dir = checkpoint_dir

    def on_checkpoint_upload_end(self, uuid: str) -> None:
        self.checkpoint_uuid = uuid


class PairMeans(pytorch.MetricReducer):
    """Validation loss and accuracy as exact means over pairs, summed across batches and slots.

    Averaging per-batch means would weigh a short last batch like a full one, so the metric would depend on
    how the pairs split into batches and slots; sums and counts do not.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.correct, self.count = 0.0, 0.0, 0

    def update(self, loss_sum: float, correct: float, count: int) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.count += count

    def per_slot_reduce(self) -> tuple[float, float, int]:
        return self.loss_sum, self.correct, self.count

    def cross_slot_reduce(self, per_slot: Sequence[tuple[float, float, int]]) -> dict[str, float]:
        loss_sum, correct, count = (sum(column) for column in zip(*per_slot, strict=True))
        return {"validation_loss": loss_sum / count, "validation_accuracy": correct / count}


class ResumableLoader(pytorch.DataLoader):
    """A Determined DataLoader that can skip the batches a local run already trained.

    On a cluster the Trainer skips them itself (from the trial's ``steps_completed``); locally it always
    starts at batch 0, so a resumed local run sets ``skip_batches`` from the checkpoint it resumes.
    """

    skip_batches = 0

    def get_data_loader(self, repeat: bool = False, skip: int = 0, num_replicas: int = 1,
                        rank: int = 0) -> torch.utils.data.DataLoader:
        return super().get_data_loader(repeat=repeat, skip=skip or self.skip_batches, num_replicas=num_replicas,
                                       rank=rank)
