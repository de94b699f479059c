"""data.py: labels, discovery, faithful pair counts, sampling, transforms, decoding, the dataset and the CLI."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import types
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from samespace import content_keys, decoding, hashing, kaggle_data, labelling, pair_dataset, pair_sampling, preprocess
from samespace.devsets import sample_set

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _noise(size: tuple[int, int] = (16, 16), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _write(path: Path, img: Image.Image, fmt: str = "PNG", **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kwargs)
    return path


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def _png16_rgb(path: Path, width: int, height: int, rgb: tuple[int, int, int]) -> Path:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one), every pixel ``rgb``."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + struct.pack(">HHH", *rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    return path


# Hand-built split: bedroom has groups of 3, 2 and 1; kitchen repeats boston/1 (a different group, size 2).
HAND_TREE = {
    "bedroom": ["boston_1_1.png", "boston_1_2.png", "boston_1_3.png", "denver_2_1.png", "denver_2_2.png",
                "austin_3_1.png"],
    "kitchen": ["boston_1_1.png", "boston_1_2.png"],
}
HAND_SIZES = (3, 2, 1, 2)


@pytest.fixture
def hand_split(tmp_path: Path) -> Path:
    root = tmp_path / "split"
    seed = 0
    for folder, names in HAND_TREE.items():
        for name in names:
            _write(root / folder / name, _noise(seed=seed))
            seed += 1
    return root


def _groups_from_sizes(sizes: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def _random_hashes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)


# --------------------------------------------------------------------------------------------
# Labels and discovery
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("boston_13693491_2.jpg", ("boston", "13693491", "2")),
        ("boston_13693491_2 .jpg", ("boston", "13693491", "2")),  # real file in the Kaggle set
        (" boston_13693491_2.jpg ", ("boston", "13693491", "2")),
        ("DENVER_77_10.JPG", ("DENVER", "77", "10")),
        ("austin_5_1.JpEg", ("austin", "5", "1")),
        ("new_york_123_4.png", ("new_york", "123", "4")),
        ("san_francisco_bay_9_12.PNG", ("san_francisco_bay", "9", "12")),
    ],
)
def test_parse_name(name: str, expected: tuple[str, str, str]) -> None:
    assert labelling.parse_name(name) == expected


@pytest.mark.parametrize("name", ["IMG_0001.jpg", "photo.jpg", "boston_123_a.jpg", "boston__2.jpg", "_1_2.jpg", ""])
def test_parse_name_unparseable(name: str) -> None:
    assert labelling.parse_name(name) is None


def test_group_ids_unparseable_names_are_own_groups_with_one_warning(tmp_path: Path) -> None:
    names = ["room/boston_1_1.jpg", "room/boston_1_2 .jpg", "room/IMG_0001.jpg", "room/photo.png",
             "other/photo.png", "other/boston_1_3.jpg"]
    paths = [tmp_path / name for name in names]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = labelling.group_ids(paths, tmp_path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "3 file name(s)" in message
    for unparsed in ("room/IMG_0001.jpg", "room/photo.png", "other/photo.png"):
        assert unparsed in message
    assert "boston_1_1" not in message
    assert ids[0] == ids[1]  # stray whitespace does not split a group
    assert len(set(ids[2:5].tolist())) == 3  # each unparsed name alone, even with the same file name
    assert ids[5] not in ids[:5]  # same city/room_id in another folder: another group
    assert len(np.unique(ids)) == 5


def test_group_ids_no_warning_when_all_parse(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = labelling.group_ids([tmp_path / "a" / "x_1_1.jpg", tmp_path / "a" / "x_1_2.jpg"], tmp_path)
    assert ids.tolist() == [0, 0]


def test_find_images_extensions_and_posix_order(tmp_path: Path) -> None:
    files = ["b/Z.JPG", "b/a.jpeg", "a-b/x.Png", "a/x.jpg", "a/y.PNG", "top.JPEG",
             "a/z.gif", "a/notes.txt", "a/w.jpg.bak", "a/README"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.jpg").mkdir()  # a folder with an image-like name is not an image
    found = [p.relative_to(tmp_path).as_posix() for p in labelling.find_images(tmp_path)]
    # ASCII order of the POSIX relative path: '-' < '/' and 'Z' < 'a' (a part-wise sort would differ)
    assert found == ["a-b/x.Png", "a/x.jpg", "a/y.PNG", "b/Z.JPG", "b/a.jpeg", "top.JPEG"]
    top_only = [p.name for p in labelling.find_images(tmp_path, recursive=False)]
    assert top_only == ["top.JPEG"]


def test_find_images_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(labelling.DataError, match="not a directory") as info:
        labelling.find_images(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


# --------------------------------------------------------------------------------------------
# Faithful and unique pair counts
# --------------------------------------------------------------------------------------------


def test_hand_tree_faithful_counts(hand_split: Path) -> None:
    paths = labelling.find_images(hand_split)
    groups = labelling.group_ids(paths, hand_split)
    sizes = sorted(np.unique(groups, return_counts=True)[1].tolist())
    assert sizes == sorted(HAND_SIZES)
    n = len(paths)
    assert n == 8
    positives = 3 * 3 + 2 * 2 + 1 * 1 + 2 * 2  # ordered pairs within a group, self-pairs included
    assert positives == 18
    assert pair_sampling.count_pairs(groups) == (positives, n * n - positives) == (18, 46)
    pos = pair_sampling.positive_pairs(groups)
    assert len(pos) == 18
    assert np.all(groups[pos[:, 0]] == groups[pos[:, 1]])
    assert len({tuple(p) for p in pos.tolist()}) == 18
    assert pos.tolist() == sorted(pos.tolist())


def test_hand_tree_unique_counts(hand_split: Path) -> None:
    paths = labelling.find_images(hand_split)
    groups = labelling.group_ids(paths, hand_split)
    n = len(paths)
    positives = 3 + 1 + 0 + 1  # g(g-1)/2
    assert pair_sampling.count_pairs(groups, "unique") == (positives, n * (n - 1) // 2 - positives) == (5, 23)
    pos = pair_sampling.positive_pairs(groups, "unique")
    assert len(pos) == 5
    assert np.all(pos[:, 0] < pos[:, 1])
    assert np.all(groups[pos[:, 0]] == groups[pos[:, 1]])


def test_real_split_arithmetic() -> None:
    # Group sizes 1-4 summing to 631 images with sum of squares 1,559 (the published positive count).
    sizes = [1] * 1 + [2] * 206 + [3] * 46 + [4] * 20
    assert sum(sizes) == 631
    assert sum(g * g for g in sizes) == 1559
    groups = _groups_from_sizes(sizes)
    assert pair_sampling.count_pairs(groups) == (1559, 396_602)
    pairs = pair_sampling.build_pairs(groups, _random_hashes(631), seed=0)
    assert int(pairs.label.sum()) == 99_776 == 1559 * 64
    assert int((pairs.label == 0).sum()) == 99_776
    assert len(pairs) == 199_552


@pytest.mark.parametrize("sizes", [[1, 2, 3, 4, 1, 2], [5], [1, 1, 1], [2, 2, 7, 1, 1, 3]])
def test_unique_mode_counts(sizes: list[int]) -> None:
    rng = np.random.default_rng(1)
    groups = rng.permutation(_groups_from_sizes(sizes))  # members not contiguous
    n = len(groups)
    expected_pos = sum(g * (g - 1) // 2 for g in sizes)
    assert pair_sampling.count_pairs(groups, "unique") == (expected_pos, n * (n - 1) // 2 - expected_pos)
    pos = pair_sampling.positive_pairs(groups, "unique")
    assert len(pos) == expected_pos
    assert np.all(pos[:, 0] < pos[:, 1])  # no self-pairs, i < j
    assert np.all(groups[pos[:, 0]] == groups[pos[:, 1]])
    every = pair_sampling.build_pairs(groups, pairing="unique", balanced=False)
    assert len(every) == n * (n - 1) // 2
    assert np.all(every.left < every.right)
    assert int(every.label.sum()) == expected_pos
    assert np.array_equal(every.label, (groups[every.left] == groups[every.right]).astype(np.uint8))
    assert not every.flags.any()


def test_faithful_unbalanced_is_every_ordered_pair() -> None:
    groups = np.array([0, 1, 0, 2, 1])
    every = pair_sampling.build_pairs(groups, balanced=False)
    assert len(every) == 25
    assert sorted(zip(every.left.tolist(), every.right.tolist(), strict=True)) == [
        (i, j) for i in range(5) for j in range(5)
    ]
    assert int(every.label.sum()) == pair_sampling.count_pairs(groups)[0] == 4 + 4 + 1


def test_balanced_pairs_need_hashes() -> None:
    with pytest.raises(ValueError, match="hashes"):
        pair_sampling.build_pairs(np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="pairing"):
        pair_sampling.positive_pairs(np.array([0, 0]), pairing="both")


def test_x64_upsampling_every_flag_once() -> None:
    groups = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 7])
    pairs = pair_sampling.build_pairs(groups, _random_hashes(len(groups)), seed=3)
    pos = pairs.label == 1
    positives = pair_sampling.positive_pairs(groups)
    flags_by_pair: dict[tuple[int, int], list[int]] = {}
    for left, right, flag in zip(pairs.left[pos], pairs.right[pos], pairs.flags[pos], strict=True):
        flags_by_pair.setdefault((int(left), int(right)), []).append(int(flag))
    assert set(flags_by_pair) == {tuple(p) for p in positives.tolist()}
    for flags in flags_by_pair.values():
        assert sorted(flags) == list(range(64))
    assert int(pos.sum()) == 64 * len(positives)
    neg = ~pos
    available = len(groups) ** 2 - len(positives)  # 122 < 64 x 22: every negative, once
    assert int(neg.sum()) == min(64 * len(positives), available) == available
    assert not pairs.flags[neg].any()
    assert np.all(groups[pairs.left[neg]] != groups[pairs.right[neg]])
    # flag decoding: variant of image 1 in the low 3 bits, of image 2 in the high 3 bits
    first, second = pair_sampling.pair_variants(np.arange(64))
    assert set(zip(first.tolist(), second.tolist(), strict=True)) == {(a, b) for a in range(8) for b in range(8)}


def test_augment_negatives_gives_negatives_seeded_random_flags() -> None:
    groups = _groups_from_sizes([3, 2, 2, 1] * 10)
    hashes = _random_hashes(len(groups))
    plain = pair_sampling.build_pairs(groups, hashes, seed=0)
    augmented = pair_sampling.build_pairs(groups, hashes, seed=0, augment_negatives=True)
    again = pair_sampling.build_pairs(groups, hashes, seed=0, augment_negatives=True)
    neg = augmented.label == 0
    # Same pairs and labels, positives untouched; only the negatives' flags change.
    for name in ("left", "right", "label"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(augmented, name))
    np.testing.assert_array_equal(plain.flags[~neg], augmented.flags[~neg])
    np.testing.assert_array_equal(augmented.flags, again.flags)
    assert not plain.flags[neg].any()
    flags = augmented.flags[neg]
    assert flags.max() < 64 and len(np.unique(flags)) == 64  # every combination occurs
    # Uniform over the 64 combinations: no flag is much rarer or commoner than average.
    counts = np.bincount(flags, minlength=64)
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()


# --------------------------------------------------------------------------------------------
# Negative sampling
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampling_case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(70), rng.integers(1, 5, 70))
    return _random_hashes(len(groups), seed=6), groups


@pytest.mark.parametrize("pairing", ["faithful", "unique"])
def test_sampled_negatives_are_unique_negatives(sampling_case, pairing: str) -> None:
    hashes, groups = sampling_case
    neg = pair_sampling.sample_negative_pairs(hashes, groups, 700, pairing=pairing, seed=0)
    assert neg.shape == (700, 2)
    assert neg.dtype == np.int64
    assert np.all(groups[neg[:, 0]] != groups[neg[:, 1]])
    assert len({tuple(p) for p in neg.tolist()}) == 700
    assert neg.tolist() == sorted(neg.tolist())
    if pairing == "unique":
        assert np.all(neg[:, 0] < neg[:, 1])


def test_sampled_negatives_seed_stable(sampling_case) -> None:
    hashes, groups = sampling_case
    first = pair_sampling.sample_negative_pairs(hashes, groups, 500, seed=11)
    again = pair_sampling.sample_negative_pairs(hashes, groups, 500, seed=11)
    other = pair_sampling.sample_negative_pairs(hashes, groups, 500, seed=12)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    overlap = len({tuple(p) for p in first.tolist()} & {tuple(p) for p in other.tolist()})
    assert overlap < 500


@pytest.mark.parametrize("pairing", ["faithful", "unique"])
def test_sampled_negatives_independent_of_block_rows(sampling_case, pairing: str) -> None:
    hashes, groups = sampling_case
    results = [
        pair_sampling.sample_negative_pairs(hashes, groups, 600, pairing=pairing, seed=4, block_rows=block)
        for block in (1, 7, 64, 256, 1000)
    ]
    for other in results[1:]:
        assert np.array_equal(results[0], other)


@pytest.mark.parametrize(("pairing", "available"), [("faithful", 25 - 9), ("unique", 10 - 2)])
def test_sampled_negative_count_is_min_of_requested_and_available(pairing: str, available: int) -> None:
    groups = np.array([0, 0, 1, 1, 2])
    hashes = _random_hashes(5, seed=2)
    everything = {
        (i, j) for i in range(5) for j in range(5)
        if groups[i] != groups[j] and (pairing == "faithful" or i < j)
    }
    assert len(everything) == available
    for requested in (0, 1, available - 1, available, available + 1, 1000):
        neg = pair_sampling.sample_negative_pairs(hashes, groups, requested, pairing=pairing, seed=0)
        assert len(neg) == min(requested, available)
        assert {tuple(p) for p in neg.tolist()} <= everything
    sampled = pair_sampling.sample_negative_pairs(hashes, groups, 1000, pairing=pairing)
    assert {tuple(p) for p in sampled.tolist()} == everything
    # one group only: nothing to sample
    assert pair_sampling.sample_negative_pairs(hashes, np.zeros(5, int), 10).shape == (0, 2)


def test_hamming() -> None:
    a = np.array([0, 0b1011, 2**64 - 1], dtype=np.uint64)
    assert hashing.hamming(a, np.uint64(0)).tolist() == [0, 3, 64]
    assert hashing.hamming(a[:, None], a[None, :]).tolist() == [[0, 3, 64], [3, 0, 61], [64, 61, 0]]


def test_weights_favour_low_hamming_distance_mean() -> None:
    hashes = _random_hashes(300, seed=9)
    groups = np.arange(300)
    d = hashing.hamming(hashes[:, None], hashes[None, :])
    off_diagonal = ~np.eye(300, dtype=bool)
    population_mean = float(d[off_diagonal].mean())
    assert 31 < population_mean < 33  # random 64-bit codes
    neg = pair_sampling.sample_negative_pairs(hashes, groups, 1000, seed=0)
    sampled_mean = float(d[neg[:, 0], neg[:, 1]].mean())
    assert sampled_mean < population_mean - 6
    uniform = np.random.default_rng(0).choice(np.flatnonzero(off_diagonal), 1000, replace=False)
    assert sampled_mean < float(d.ravel()[uniform].mean()) - 6


def test_weights_inclusion_ratio_is_e_to_minus_d() -> None:
    # Two clusters of 100 singletons: within a cluster d = 0 (weight 1), across d = 1 (weight e^-1).
    # Sampling 200 of 39,800 pairs (0.5%) makes inclusion probability ~ proportional to the weight.
    n = 200
    hashes = np.where(np.arange(n) < n // 2, 0, 1).astype(np.uint64)
    groups = np.arange(n)
    close_pairs = 2 * 100 * 99
    far_pairs = 2 * 100 * 100
    n_close = n_far = 0
    for seed in range(50):
        neg = pair_sampling.sample_negative_pairs(hashes, groups, 200, seed=seed)
        far = hashes[neg[:, 0]] != hashes[neg[:, 1]]
        n_far += int(far.sum())
        n_close += int((~far).sum())
    assert n_close + n_far == 50 * 200
    ratio = (n_far / far_pairs) / (n_close / close_pairs)
    # log-ratio standard error from the two counts; 4 sigma (~ +-9%) excludes e^-2 and 2^-1 by far
    tolerance = 4 * math.sqrt(1 / n_far + 1 / n_close)
    assert abs(math.log(ratio) - (-1.0)) < tolerance, (ratio, math.exp(-1))


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def test_flip_of_flip_is_identity() -> None:
    x = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(0))
    flipped = preprocess.apply_variant(x, preprocess.FLIP)
    assert not torch.equal(flipped, x)
    assert torch.equal(flipped.flip(-1), x)
    assert torch.equal(preprocess.apply_variant(flipped, preprocess.FLIP), x)


def test_rotations_keep_shape_and_differ() -> None:
    x = torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(1))
    outputs = {v: preprocess.apply_variant(x, v) for v in range(preprocess.N_VARIANTS)}
    for out in outputs.values():
        assert out.shape == x.shape
    assert torch.equal(outputs[0], x)
    assert not torch.allclose(outputs[2], x)
    assert not torch.allclose(outputs[4], x)
    assert not torch.allclose(outputs[2], outputs[4])


@pytest.mark.parametrize(("variant", "row_shift"),
                         [(preprocess.ROTATE_ANTICLOCKWISE, -1), (preprocess.ROTATE_CLOCKWISE, +1)])
def test_rotation_moves_a_known_pixel(variant: int, row_shift: int) -> None:
    # A 3x3 blob 40 px right of the centre: +5 degrees (anticlockwise on screen) lifts it by 40 sin 5 deg.
    x = torch.zeros(1, 3, 129, 129)
    c = 64
    x[..., c - 1 : c + 2, c + 39 : c + 42] = 1.0
    y = preprocess.apply_variant(x, variant)[0, 0]
    rows, cols = torch.meshgrid(torch.arange(129.0), torch.arange(129.0), indexing="ij")
    mass = y.sum()
    assert float(mass) == pytest.approx(9.0, abs=0.05)
    dy = float((y * rows).sum() / mass) - c
    dx = float((y * cols).sum() / mass) - c
    angle = math.radians(preprocess.ROTATION_DEGREES)
    assert dy == pytest.approx(row_shift * 40 * math.sin(angle), abs=0.1)
    assert dx == pytest.approx(40 * math.cos(angle), abs=0.1)


def test_to_model_input_constant_image() -> None:
    values = (10, 128, 250)
    image = np.empty((2, 8, 9, 3), np.uint8)
    image[...] = values
    out = preprocess.to_model_input(image)
    assert out.shape == (2, 3, 8, 9)
    assert out.dtype == torch.float32
    normalised = preprocess.normalise(out, "mobilenet_v3_large")
    for ch, v in enumerate(values):
        assert torch.allclose(out[:, ch], torch.full((2, 8, 9), v / 255), atol=1e-6)  # [0, 1]: scaled first
        expected = (v / 255 - preprocess.IMAGENET_MEAN[ch]) / preprocess.IMAGENET_STD[ch]
        assert torch.allclose(normalised[:, ch], torch.full((2, 8, 9), expected), atol=1e-5)
        published_bug = (v - preprocess.IMAGENET_MEAN[ch]) / preprocess.IMAGENET_STD[ch] / 255
        assert abs(expected - published_bug) > 0.1
        assert not torch.allclose(normalised[:, ch], torch.full((2, 8, 9), published_bug), atol=1e-3)


def test_each_backbone_gets_the_normalisation_its_weights_were_trained_with() -> None:
    """MobileNetV3 (torchvision): ImageNet mean / std. EfficientNet-Lite0 (TF weights): (x * 255 - 127) / 128."""
    assert preprocess.INPUT_NORMALISATION["mobilenet_v3_large"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = np.array([[[[0, 127, 255]]]], np.uint8)  # one pixel, channels 0 / 127 / 255
    x = preprocess.to_model_input(pixels)
    lite = preprocess.normalise(x, "efficientnet_lite0").flatten()
    torch.testing.assert_close(lite, (torch.tensor([0.0, 127.0, 255.0]) - 127) / 128, atol=1e-6, rtol=0)
    mobile = preprocess.normalise(x, "mobilenet_v3_large").flatten()
    mean, std = torch.tensor(preprocess.IMAGENET_MEAN), torch.tensor(preprocess.IMAGENET_STD)
    expected = (torch.tensor([0.0, 127 / 255, 1.0]) - mean) / std
    torch.testing.assert_close(mobile, expected, atol=1e-6, rtol=0)
    assert set(preprocess.INPUT_NORMALISATION) == {"mobilenet_v3_large", "efficientnet_lite0"}
    with pytest.raises(ValueError, match="resnet"):
        preprocess.normalise(x, "resnet")


def test_to_model_input_transforms_before_normalising() -> None:
    # Rotation fills corners with black in [0, 1] space, so a corner is (0 - mean) / std after normalising.
    white = np.full((32, 32, 3), 255, np.uint8)
    out = preprocess.normalise(preprocess.to_model_input(white, preprocess.ROTATE_ANTICLOCKWISE), "mobilenet_v3_large")
    for ch in range(3):
        black = -preprocess.IMAGENET_MEAN[ch] / preprocess.IMAGENET_STD[ch]
        white_value = (1 - preprocess.IMAGENET_MEAN[ch]) / preprocess.IMAGENET_STD[ch]
        assert float(out[ch, 0, 0]) == pytest.approx(black, abs=1e-5)
        assert float(out[ch, 16, 16]) == pytest.approx(white_value, abs=1e-5)
    image = np.array(_noise((12, 10), seed=3))
    flipped = preprocess.to_model_input(image, preprocess.FLIP)
    assert torch.allclose(flipped, preprocess.to_model_input(image).flip(-1))
    assert torch.equal(preprocess.to_model_input(torch.as_tensor(image)), preprocess.to_model_input(image))


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_dataset(train_dir: Path) -> pair_dataset.DuplicateImageDataset:
    return pair_dataset.DuplicateImageDataset(train_dir, progress=False)


def test_dataset_items(train_dataset: pair_dataset.DuplicateImageDataset) -> None:
    ds = train_dataset
    assert ds.images.shape == (len(ds.paths), 256, 256, 3)
    assert ds.images.dtype == np.uint8
    labels = ds.pairs.label
    picks = [0, int(np.argmax(labels == 0)), len(ds) - 1, int(np.flatnonzero(labels == 1)[37])]
    for k in picks:
        image1, image2, label = ds[k]
        assert image1.shape == image2.shape == (3, 256, 256)
        assert image1.dtype == image2.dtype == torch.float32
        assert label.shape == () and float(label) == float(labels[k])
        assert float(label) == float(ds.groups[ds.pairs.left[k]] == ds.groups[ds.pairs.right[k]])
        flags = int(ds.pairs.flags[k])
        assert torch.equal(image1, preprocess.to_model_input(ds.images[ds.pairs.left[k]], flags % 8))
        assert torch.equal(image2, preprocess.to_model_input(ds.images[ds.pairs.right[k]], flags // 8))


def test_dataset_summary(train_dataset: pair_dataset.DuplicateImageDataset) -> None:
    s = train_dataset.summary()
    assert tuple(s) == pair_dataset.SUMMARY_KEYS
    assert all(isinstance(v, int) for v in s.values())
    sizes = np.unique(train_dataset.groups, return_counts=True)[1]
    assert s["images"] == len(train_dataset.paths) == int(sizes.sum())
    assert s["groups"] == len(sizes)
    assert s["skipped"] == 0
    assert s["positive_pairs"] == int((sizes**2).sum())
    assert s["positive_pairs"] + s["negative_pairs"] == s["images"] ** 2
    assert s["upsampled_positive_pairs"] == 64 * s["positive_pairs"]
    assert s["sampled_negative_pairs"] == min(s["upsampled_positive_pairs"], s["negative_pairs"])
    assert s["total_pairs"] == s["upsampled_positive_pairs"] + s["sampled_negative_pairs"] == len(train_dataset)
    # the generated sample: 4 room types x 4 rooms, each photographed 2-4 times
    assert s["groups"] == 16
    assert 32 <= s["images"] <= 64


def test_dataset_same_pairs_twice(train_dir: Path, train_dataset: pair_dataset.DuplicateImageDataset) -> None:
    again = pair_dataset.DuplicateImageDataset(train_dir, progress=False)
    for name in ("left", "right", "label", "flags"):
        assert np.array_equal(getattr(again.pairs, name), getattr(train_dataset.pairs, name))
    assert np.array_equal(again.images, train_dataset.images)
    assert np.array_equal(again.hashes, train_dataset.hashes)


def test_dataset_hand_tree(hand_split: Path) -> None:
    ds = pair_dataset.DuplicateImageDataset(hand_split, progress=False)
    assert ds.summary() == {
        "images": 8, "groups": 4, "skipped": 0, "positive_pairs": 18, "negative_pairs": 46,
        "upsampled_positive_pairs": 18 * 64, "sampled_negative_pairs": 46, "total_pairs": 18 * 64 + 46,
    }
    unique = pair_dataset.DuplicateImageDataset(hand_split, pairing="unique", progress=False)
    assert unique.summary()["positive_pairs"] == 5
    assert unique.summary()["negative_pairs"] == 23
    assert unique.summary()["total_pairs"] == 5 * 64 + 23
    honest = pair_dataset.DuplicateImageDataset(hand_split, balanced=False, progress=False)
    assert honest.hashes is None
    assert len(honest) == 64
    assert honest.summary()["upsampled_positive_pairs"] == 18


# --------------------------------------------------------------------------------------------
# Decoding and bad input
# --------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 40x20: left half red, right half blue. Orientation 6 = rotate 90 degrees clockwise to display,
    # so the red half ends up on top.
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)
    array[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _write(tmp_path / "o.jpg", Image.fromarray(array), "JPEG", exif=exif.tobytes(), quality=95)
    out = decoding.load_image(path).astype(int)
    assert out.shape == (256, 256, 3)
    assert out[20, 128, 0] > 200 and out[20, 128, 2] < 50  # top: red
    assert out[235, 128, 2] > 200 and out[235, 128, 0] < 50  # bottom: blue
    plain = decoding.load_image(_write(tmp_path / "p.jpg", Image.fromarray(array), "JPEG", quality=95)).astype(int)
    assert plain[128, 20, 0] > 200 and plain[128, 235, 2] > 200  # without the tag: left red, right blue
    assert decoding.decode_image(path)[1] == 0.5  # the upright photo's width / height: 20 x 40 as displayed
    assert decoding.decode_image(tmp_path / "p.jpg")[1] == 2.0


def _check_rgb(out: np.ndarray, expected: tuple[int, int, int], atol: int = 2) -> None:
    assert out.shape == (256, 256, 3)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.array(expected)).max() <= atol


def test_image_modes(tmp_path: Path) -> None:
    _check_rgb(decoding.load_image(_write(tmp_path / "l.png", Image.new("L", (20, 10), 77))), (77, 77, 77))
    _check_rgb(decoding.load_image(_write(tmp_path / "l.jpg", Image.new("L", (20, 10), 77), "JPEG")), (77, 77, 77))
    _check_rgb(decoding.load_image(_write(tmp_path / "1.png", Image.new("1", (20, 10), 1))), (255, 255, 255))
    palette = Image.new("P", (20, 10), 1)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    _check_rgb(decoding.load_image(_write(tmp_path / "p.png", palette)), (200, 100, 50))
    _check_rgb(decoding.load_image(_write(tmp_path / "pt.png", palette, transparency=1)), (255, 255, 255))
    _check_rgb(decoding.load_image(_write(tmp_path / "rgba.png", Image.new("RGBA", (20, 10), (0, 0, 0, 0)))),
               (255, 255, 255))  # fully transparent -> white, not black
    _check_rgb(decoding.load_image(_write(tmp_path / "rgba2.png", Image.new("RGBA", (20, 10), (0, 0, 200, 255)))),
               (0, 0, 200))
    _check_rgb(decoding.load_image(_write(tmp_path / "la.png", Image.new("LA", (20, 10), (0, 0)))), (255, 255, 255))
    _check_rgb(decoding.load_image(_write(tmp_path / "c.jpg", Image.new("CMYK", (20, 10), (0, 0, 0, 0)), "JPEG")),
               (255, 255, 255))
    _check_rgb(decoding.load_image(_write(tmp_path / "c2.jpg", Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG")),
               (255, 0, 0))


def test_16_bit_png(tmp_path: Path) -> None:
    grey = np.full((10, 40), 65535, np.uint16)
    grey[:, :20] = 0
    out = decoding.load_image(_write(tmp_path / "g16.png", Image.fromarray(grey)))
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert out[:, :100].max() == 0
    assert out[:, 156:].min() == 255  # 16-bit white stays white
    _check_rgb(decoding.load_image(_write(tmp_path / "mid.png", Image.fromarray(np.full((8, 8), 32896, np.uint16)))),
               (128, 128, 128), atol=1)
    white = decoding.load_image(_png16_rgb(tmp_path / "rgb16.png", 12, 8, (65535, 65535, 65535)))
    _check_rgb(white, (255, 255, 255), 0)
    _check_rgb(decoding.load_image(_png16_rgb(tmp_path / "rgb16b.png", 12, 8, (65535, 0, 32896))), (255, 0, 128), 1)


def _bad_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "bad_11_1.jpg"
    empty.write_bytes(b"")
    truncated = folder / "bad_12_1.jpg"
    raw = _jpeg_bytes(_noise((48, 48), seed=4), quality=90)
    truncated.write_bytes(raw[: len(raw) // 2])
    text = folder / "bad_13_1.jpg"
    text.write_text("this is not a photo\n")
    return [empty, truncated, text]


def test_load_image_bad_files(tmp_path: Path) -> None:
    for path in _bad_files(tmp_path):
        with pytest.raises(decoding.UnreadableImageError) as info:
            decoding.load_image(path)
        assert str(path) in str(info.value)
    with pytest.raises(decoding.UnreadableImageError, match="truncated"):
        decoding.load_image(tmp_path / "bad_12_1.jpg")


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # data's own limits decide, never PIL's global MAX_IMAGE_PIXELS (photos decode in threads); lowered here so
    # that small files stand for bombs
    monkeypatch.setattr(decoding, "MAX_DECLARED_PIXELS", 5000)
    bomb = _write(tmp_path / "w.png", _noise((80, 80)))  # 6,400 px declared
    with pytest.raises(decoding.UnreadableImageError) as info:
        decoding.load_image(bomb)
    assert str(info.value) == (f"{bomb}: cannot read image (DecompressionBombError: 80x80 pixels declared, more than "
                               "the limit of 5,000: a decompression bomb)")
    assert decoding.load_image(_write(tmp_path / "ok.png", _noise((60, 60)))).shape == (256, 256, 3)
    # The limits do not depend on warning filters (another thread's catch_warnings may restore them).
    monkeypatch.setattr(warnings, "simplefilter", lambda *args, **kwargs: None)
    monkeypatch.setattr(warnings, "filterwarnings", lambda *args, **kwargs: None)
    with pytest.raises(decoding.UnreadableImageError, match="DecompressionBombError"):
        decoding.load_image(bomb)
    # PIL's global limit is not consulted: a photo over it decodes, without a warning.
    monkeypatch.setattr(decoding, "MAX_DECLARED_PIXELS", 1 << 30)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decoding.load_image(bomb).shape == (256, 256, 3)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_dataset_skips_bad_files_with_one_warning_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "MAX_DECLARED_PIXELS", 5000)
    room = tmp_path / "split" / "room"
    _write(room / "boston_1_1.png", _noise(seed=1))
    _write(room / "boston_1_2.png", _noise(seed=2))
    _write(room / "denver_2_1.jpg", _noise(seed=3), "JPEG")
    bad = _bad_files(room)
    bad.append(_write(room / "bad_14_1.png", _noise((80, 80))))
    bad.append(_write(room / "bad_15_1.PNG", _noise((128, 128))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pair_dataset.DuplicateImageDataset(tmp_path / "split", progress=False)
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == len(bad) == 5
    for path in bad:
        assert sum(str(path) in m for m in messages) == 1
    summary = ds.summary()
    assert summary["skipped"] == 5
    assert summary["images"] == 3
    assert summary["positive_pairs"] == 4 + 1
    assert [p.name for p in ds.paths] == ["boston_1_1.png", "boston_1_2.png", "denver_2_1.jpg"]
    assert len(ds.skipped) == 5


def test_data_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(labelling.DataError) as info:
        pair_dataset.DuplicateImageDataset(missing, progress=False)
    assert str(missing) in str(info.value)

    empty = tmp_path / "empty"
    (empty / "room").mkdir(parents=True)
    (empty / "room" / "notes.txt").write_text("no photos")
    with pytest.raises(labelling.DataError, match="no images") as info:
        pair_dataset.DuplicateImageDataset(empty, progress=False)
    assert str(empty) in str(info.value)

    singles = tmp_path / "singles"
    _write(singles / "room" / "boston_1_1.png", _noise(seed=1))
    _write(singles / "room" / "boston_2_1.png", _noise(seed=2))
    _write(singles / "other" / "boston_1_2.png", _noise(seed=3))  # same room id, other folder: not a duplicate
    for pairing in pair_sampling.PAIRINGS:
        with pytest.raises(labelling.DataError, match="no duplicate pairs") as info:
            pair_dataset.DuplicateImageDataset(singles, pairing=pairing, progress=False)
        assert str(singles) in str(info.value)

    unreadable = tmp_path / "unreadable"
    _bad_files(unreadable / "room")
    with pytest.warns(UserWarning, match="skipped"), pytest.raises(labelling.DataError, match="could be read") as info:
        pair_dataset.DuplicateImageDataset(unreadable, progress=False)
    assert str(unreadable) in str(info.value)


# --------------------------------------------------------------------------------------------
# Command line, sample data, download
# --------------------------------------------------------------------------------------------


def test_cli_stats_json(train_dir: Path, train_dataset: pair_dataset.DuplicateImageDataset, capsys) -> None:
    assert data.main(["stats", str(train_dir), "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert list(summary) == list(pair_dataset.SUMMARY_KEYS)
    assert summary == train_dataset.summary()


def test_cli_stats_never_imports_torch(train_dir: Path, train_dataset: pair_dataset.DuplicateImageDataset) -> None:
    # Importing torch + torchvision costs ~0.9 GB of RSS: `data.py stats` must stay under 600 MB.
    code = ("import sys, data; status = data.main(['stats', sys.argv[1], '--json']); "
            "print(sorted(name for name in ('torch', 'torchvision') if name in sys.modules)); sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code, str(train_dir)], cwd=Path(data.__file__).parent,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary, imported = done.stdout.strip().splitlines()
    assert json.loads(summary) == train_dataset.summary()
    assert imported == "[]"


def test_cli_stats_error(tmp_path: Path, capsys) -> None:
    assert data.main(["stats", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert str(tmp_path / "nowhere") in err


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_sample_dataset_deterministic(tmp_path: Path) -> None:
    rooms = {"Training Data": 1, "Test Data": 1}
    first = _tree_bytes(sample_set.write_sample_dataset(tmp_path / "a", seed=3, rooms=rooms))
    second = _tree_bytes(sample_set.write_sample_dataset(tmp_path / "b", seed=3, rooms=rooms))
    other = _tree_bytes(sample_set.write_sample_dataset(tmp_path / "c", seed=4, rooms=rooms))
    assert first == second
    assert first != other
    assert all(not name.startswith(".") for name in first)  # no staging folder left behind
    with pytest.raises(labelling.DataError, match="already exists"):
        sample_set.write_sample_dataset(tmp_path / "a", seed=3, rooms=rooms)


def test_write_sample_dataset_ignores_stale_staging(tmp_path: Path) -> None:
    rooms = {"Training Data": 1}
    clean = _tree_bytes(sample_set.write_sample_dataset(tmp_path / "clean", seed=3, rooms=rooms))
    stale = tmp_path / "crashed" / ".Training Data.partial" / "bedroom"
    stale.mkdir(parents=True)
    (stale / "boston_1_1.jpg").write_bytes(b"from a failed run with another seed")
    assert _tree_bytes(sample_set.write_sample_dataset(tmp_path / "crashed", seed=3, rooms=rooms)) == clean


def test_cli_sample(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "sample"
    assert data.main(["sample", str(out_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["Test Data", "Training Data"]
    for split, rooms_per_type in (("Training Data", 20), ("Test Data", 8)):
        folders = sorted(p.name for p in (out_dir / split).iterdir())
        assert folders == sorted(sample_set.ROOM_TYPES)
        for folder in folders:
            names = [p.name for p in (out_dir / split / folder).iterdir()]
            parsed = [labelling.parse_name(name) for name in names]
            assert None not in parsed
            photos = Counter((city, room) for city, room, _ in parsed)
            assert len(photos) == rooms_per_type
            assert set(photos.values()) <= {2, 3, 4}


@pytest.fixture
def no_kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Kaggle credentials anywhere, no repository kaggle.json, and importing kaggle fails loudly."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)  # a trial runs in its model-definition folder
    monkeypatch.setitem(sys.modules, "kaggle", None)  # `import kaggle` raises ImportError
    return repo


def _fake_kaggle(monkeypatch: pytest.MonkeyPatch, calls: list[str], fail: BaseException | None = None) -> None:
    def dataset_download_files(dataset: str, path: str, unzip: bool, quiet: bool) -> None:
        calls.append(dataset)
        if fail is not None:
            raise fail
        for split in labelling.SPLITS:
            (Path(path) / kaggle_data.DATASET_FOLDER / split / "room").mkdir(parents=True)
            (Path(path) / kaggle_data.DATASET_FOLDER / split / "room" / "boston_1_1.jpg").write_bytes(b"x")

    fake = types.SimpleNamespace(api=types.SimpleNamespace(dataset_download_files=dataset_download_files))
    monkeypatch.setitem(sys.modules, "kaggle", fake)


def test_download_without_credentials(tmp_path: Path, no_kaggle: Path, capsys) -> None:
    target = tmp_path / "data"
    with pytest.raises(labelling.DataError) as info:
        kaggle_data.download_data(target)
    message = str(info.value)
    for hint in ("kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", kaggle_data.KAGGLE_DATASET, "Training Data"):
        assert hint in message
    assert str(target / kaggle_data.DATASET_FOLDER) in message
    assert not target.exists()  # nothing is created before the credentials are found
    assert data.main(["download", "--path", str(tmp_path / "cli")]) == 2
    assert "Kaggle credentials not found" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_download_already_present(tmp_path: Path, no_kaggle: Path, capsys) -> None:
    for split in labelling.SPLITS:
        (tmp_path / "data" / kaggle_data.DATASET_FOLDER / split).mkdir(parents=True)
    assert kaggle_data.download_data(tmp_path / "data") == tmp_path / "data" / kaggle_data.DATASET_FOLDER
    assert data.main(["download", "--path", str(tmp_path / "data")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "data" / kaggle_data.DATASET_FOLDER)
    assert not (tmp_path / "data" / ".download.lock").exists()  # returned before even taking the lock


@pytest.mark.parametrize("credential", ["env", "api_token", "access_token_file", "repo_kaggle_json"])
def test_download_with_credentials(
    tmp_path: Path, no_kaggle: Path, monkeypatch: pytest.MonkeyPatch, credential: str
) -> None:
    if credential == "env":
        monkeypatch.setenv("KAGGLE_USERNAME", "someone")
        monkeypatch.setenv("KAGGLE_KEY", "secret")
    elif credential == "api_token":
        monkeypatch.setenv("KAGGLE_API_TOKEN", "token")
    elif credential == "access_token_file":
        (tmp_path / "home" / ".kaggle").mkdir()
        (tmp_path / "home" / ".kaggle" / "access_token").write_text("token")
    else:
        (no_kaggle / "kaggle.json").write_text("{}")
    calls: list[str] = []
    _fake_kaggle(monkeypatch, calls)
    root = kaggle_data.download_data(tmp_path / "data")
    assert calls == [kaggle_data.KAGGLE_DATASET]
    assert root == tmp_path / "data" / kaggle_data.DATASET_FOLDER
    assert all((root / split / "room" / "boston_1_1.jpg").is_file() for split in labelling.SPLITS)
    assert {p.name for p in (tmp_path / "data").iterdir()} <= {kaggle_data.DATASET_FOLDER, ".download.lock"}
    if credential == "repo_kaggle_json":
        assert os.environ["KAGGLE_CONFIG_DIR"] == str(no_kaggle)
    assert kaggle_data.download_data(tmp_path / "data") == root
    assert calls == [kaggle_data.KAGGLE_DATASET]  # not downloaded twice


def test_download_failure_is_a_data_error(tmp_path: Path, no_kaggle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_API_TOKEN", "token")
    calls: list[str] = []
    _fake_kaggle(monkeypatch, calls, fail=ConnectionError("network is unreachable"))
    with pytest.raises(labelling.DataError, match="network is unreachable") as info:
        kaggle_data.download_data(tmp_path / "data")
    assert "by hand" in str(info.value)
    assert not (tmp_path / "data" / kaggle_data.DATASET_FOLDER).exists()


def test_hamming_without_numpy_bitwise_count_gives_the_same_distances(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy < 2.0 (the default Determined image has 1.24.4) has no np.bitwise_count: the table fallback."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, size=(5, 1), dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # top and low bits set
    b = rng.integers(0, 2**63, size=(1, 7), dtype=np.uint64)
    native = hashing.hamming(a, b)
    expected = np.array([[bin(int(x) ^ int(y)).count("1") for y in b[0]] for x in a[:, 0]])
    np.testing.assert_array_equal(native, expected)
    monkeypatch.delattr(np, "bitwise_count", raising=False)  # numpy < 2.0 has none to remove
    fallback = hashing.hamming(a, b)
    assert fallback.dtype == np.int64 and fallback.shape == (5, 7)
    np.testing.assert_array_equal(fallback, expected)


def test_file_digest_equals_hashlib_of_the_whole_content(tmp_path: Path) -> None:
    """hashing.file_digest, the one chunked hashing loop (blank.file_digest, content_keys.content_key), gives
    hashlib's digest of the whole content, across chunk boundaries and for an empty file."""
    import hashlib

    from samespace import blank

    for size in (0, 1, 4096, 3 * 4096 + 17):
        content = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
        path = tmp_path / f"{size}.bin"
        path.write_bytes(content)
        with open(path, "rb") as f:
            assert hashing.file_digest(f, hashlib.sha256(), chunk=4096) == hashlib.sha256(content).hexdigest()
        assert blank.file_digest(path, chunk=4096) == hashlib.sha256(content).hexdigest()
        key = hashlib.blake2b(content, digest_size=content_keys.KEY_BYTES).hexdigest()
        assert content_keys.content_key(path) == content_keys.content_key_of(content) == key
