"""The pair dataset of one split directory: ``(image1, image2, label)`` items and the split's counts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from samespace import decoding, hashing, labelling, outputs, pair_sampling, preprocess

if TYPE_CHECKING:
    import torch


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
        paths = labelling.find_images(self.root, unreadable=folders)
        if not paths:
            raise labelling.DataError(f"{self.root}: no images ({', '.join(outputs.IMAGE_EXTENSIONS)}) found")
        self.images: np.ndarray | None
        if keep_images:
            self.images, kept, self.skipped = decoding.load_images(paths, progress=progress)
            self.hashes = hashing.whash_codes(self.images) if balanced else None
        else:
            self.images = None
            self.hashes, kept, self.skipped = hashing.stream_hashes(paths, progress=progress)
            self.hashes = self.hashes if balanced else None
        self.skipped += decoding.skipped_folders(folders)
        self.paths = [paths[k] for k in kept]
        if not self.paths:
            raise labelling.DataError(f"{self.root}: none of the {len(paths)} image files could be read")
        self.groups = labelling.group_ids(self.paths, self.root)
        self.pairing = pairing
        self.positive_count, self.negative_count = pair_sampling.count_pairs(self.groups, pairing)
        if self.positive_count == 0 or (pairing == "faithful" and self.positive_count == len(self.paths)):
            raise labelling.DataError(f"{self.root}: no duplicate pairs (no two images share folder, city and room_id)")
        self.pairs = pair_sampling.build_pairs(
            self.groups, self.hashes, pairing=pairing, balanced=balanced, seed=seed, augment_negatives=augment_negatives
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def image(self, index: int) -> np.ndarray:
        """The decoded uint8 photo ``index``: kept in memory, or decoded again with :func:`load_image`."""
        return self.images[index] if self.images is not None else decoding.load_image(self.paths[index])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        variant1, variant2 = pair_sampling.pair_variants(self.pairs.flags[k])
        image1 = preprocess.to_model_input(self.image(int(self.pairs.left[k])), int(variant1))
        image2 = preprocess.to_model_input(self.image(int(self.pairs.right[k])), int(variant2))
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
