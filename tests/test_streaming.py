"""Pixels streamed, never held for a split: datasets that keep only hashes, extraction from files, views."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from samespace import backbones, decoding, feature_cache, labelling, pair_dataset, preprocess


def _small_extractor() -> backbones.FrozenFeatureExtractor:
    """A cheap frozen extractor (16-d features): these tests are about the data path, not the backbone."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.AvgPool2d(16), nn.Conv2d(3, 16, 3), nn.AdaptiveAvgPool2d(1))
    return backbones.FrozenFeatureExtractor(body, out_dim=16, backbone="mobilenet_v3_large")  # its normalisation


def test_a_dataset_without_pixels_has_the_same_pairs_and_items(train_dir: Path) -> None:
    held = pair_dataset.DuplicateImageDataset(train_dir, progress=False)
    streamed = pair_dataset.DuplicateImageDataset(train_dir, progress=False, keep_images=False)
    assert streamed.images is None and held.images is not None
    assert np.array_equal(streamed.hashes, held.hashes) and streamed.paths == held.paths
    for field in ("left", "right", "label", "flags"):
        assert np.array_equal(getattr(streamed.pairs, field), getattr(held.pairs, field))
    assert streamed.summary() == held.summary()
    for k in (0, len(held) // 2, len(held) - 1):  # a positive with flags, and sampled negatives
        for a, b in zip(streamed[k], held[k], strict=True):
            assert torch.equal(a, b)


def test_extraction_from_files_equals_extraction_from_pixels(train_dir: Path, tmp_path: Path) -> None:
    paths = labelling.find_images(train_dir)[:10]
    pixels = np.stack([decoding.load_image(p) for p in paths])
    extractor = _small_extractor()
    expected = feature_cache.extract_features(extractor, pixels, progress=False)
    streamed = feature_cache.extract_features(extractor, paths, batch_size=3, progress=False, cache_dir=tmp_path)
    assert streamed.shape == (10, preprocess.N_VARIANTS, 16)
    torch.testing.assert_close(streamed, expected, atol=1e-6, rtol=0)
    assert len(list(tmp_path.iterdir())) == 1
    assert torch.equal(feature_cache.extract_features(extractor, paths, progress=False, cache_dir=tmp_path), streamed)
    # The files' bytes key the cache: another file list is another entry.
    assert feature_cache.feature_cache_key(extractor, paths, range(8)) != feature_cache.feature_cache_key(
        extractor, paths[1:], range(8)
    )


def _crop_view(images: np.ndarray, view: int, indices: np.ndarray, size: int) -> torch.Tensor:
    """A per-image view: a crop whose corner depends on the image index and the view id."""
    out = []
    for image, index in zip(images, indices, strict=True):
        offset = (int(index) * 7 + view * 13) % (image.shape[0] - size)
        out.append(preprocess.to_model_input(image[offset : offset + size, offset : offset + size]))
    return torch.stack(out)


def test_views_are_pluggable(train_dir: Path, tmp_path: Path) -> None:
    paths = labelling.find_images(train_dir)[:5]
    extractor = _small_extractor()
    view = functools.partial(_crop_view, size=200)
    table = feature_cache.extract_features(
        extractor, paths, variants=[0, 1, 2], view=view, batch_size=2, progress=False, cache_dir=tmp_path
    )
    assert table.shape == (5, 3, 16)
    image = decoding.load_image(paths[3])
    with torch.no_grad():
        expected = extractor(_crop_view(image[None], 2, np.array([3]), 200))[0]
    torch.testing.assert_close(table[3, 2], expected, atol=1e-6, rtol=0)
    keys = {feature_cache.feature_cache_key(extractor, paths, [0, 1, 2], v)
            for v in (view, functools.partial(_crop_view, size=100), feature_cache.variant_view)}
    assert len(keys) == 3  # the view function's code and arguments key the cache


@pytest.mark.parametrize("batch_size", [1, 4])
def test_extraction_holds_one_batch_of_pixels(train_dir: Path, batch_size: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are decoded batch by batch: never more than batch_size images at once."""
    paths = labelling.find_images(train_dir)[:6]
    sizes: list[int] = []

    def view(images: np.ndarray, variant: int, indices: np.ndarray) -> torch.Tensor:
        sizes.append(len(images))
        return feature_cache.variant_view(images, variant, indices)

    feature_cache.extract_features(_small_extractor(), paths, variants=[0], view=view, batch_size=batch_size,
                           progress=False)
    assert max(sizes) == batch_size and sum(sizes) == 6
