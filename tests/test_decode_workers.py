"""Decoding on a pool of workers: the same pixels, keys, order and skipped files whatever the pool and its size;
--workers and --decode-pool on the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from samespace import batch_decoding, cli, content_keys, feature_cache, scorers, verification
from samespace.commands import embed, find


@pytest.fixture()
def photos(tmp_path: Path, test_dir: Path) -> list[Path]:
    """Nine sample photos and two unreadable files among them (an odd count: the last batch is short)."""
    root = tmp_path / "photos"
    root.mkdir()
    sources = sorted(test_dir.rglob("*.jpg"))[:9]
    for k, source in enumerate(sources):
        shutil.copy(source, root / f"{k:02d}-{source.name}")
    (root / "03-broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "07-empty.jpg").write_bytes(b"")
    return sorted(root.iterdir())


def _decoded(paths: list[Path], workers: int, pool: str, keyed: bool) -> dict:
    batches = list(batch_decoding.decoded_batches(paths, batch_size=4, workers=workers, keyed=keyed, pool=pool))
    return {
        "indices": [i for b in batches for i in b.indices],
        "images": np.concatenate([b.images for b in batches]),
        "aspects": np.concatenate([b.aspects for b in batches]),
        "skipped": [s for b in batches for s in b.skipped],
        "keys": [k for b in batches for k in b.keys],
        "sizes": [st.st_size for b in batches for st in b.stats],
    }


@pytest.mark.parametrize("keyed", [False, True])
def test_the_same_pixels_whatever_the_pool_and_its_size(photos: list[Path], keyed: bool) -> None:
    reference = _decoded(photos, workers=1, pool="thread", keyed=keyed)
    broken = [photos.index(p) for p in photos if p.name in ("03-broken.jpg", "07-empty.jpg")]
    assert [k for k, _ in reference["skipped"]] == broken and all(r for _, r in reference["skipped"])
    assert reference["indices"] == [k for k in range(len(photos)) if k not in broken]
    assert reference["images"].shape == (9, 256, 256, 3) and reference["images"].dtype == np.uint8
    if keyed:
        assert reference["keys"] == [content_keys.content_key(photos[k]) for k in reference["indices"]]
        assert reference["sizes"] == [photos[k].stat().st_size for k in reference["indices"]]
    for workers, pool in [(3, "thread"), (1, "process"), (3, "process")]:
        other = _decoded(photos, workers=workers, pool=pool, keyed=keyed)
        for name, value in reference.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(other[name], value, err_msg=f"{name} with {workers} {pool} workers")
            else:
                assert other[name] == value, (name, workers, pool)


@pytest.mark.parametrize(("workers", "pool"), [(1, "thread"), (3, "thread"), (2, "process")])
def test_keypoints_found_in_the_pool_are_those_found_beside_the_model(photos: list[Path], workers: int,
                                                                       pool: str) -> None:
    batches = list(batch_decoding.decoded_batches(photos, batch_size=4, workers=workers, pool=pool,
                                                  then=verification.local_features))
    assert [len(b.prepared) for b in batches] == [len(b.indices) for b in batches] == [3, 4, 2]  # 2 unreadable
    for batch in batches:
        for image, aspect, found in zip(batch.images, batch.aspects, batch.prepared, strict=True):
            here = verification.local_features(image, aspect)
            assert len(here.xy) > 10  # a generated room: a few dozen
            np.testing.assert_array_equal(found.xy, here.xy)
            np.testing.assert_array_equal(found.descriptors, here.descriptors)
    assert all(b.prepared == [] for b in batch_decoding.decoded_batches(photos, batch_size=4, workers=1))


def test_a_scorer_takes_the_pools_keypoints_as_its_own(photos: list[Path]) -> None:
    batch = next(batch_decoding.decoded_batches(photos, batch_size=4, workers=2, then=verification.local_features))
    scorer = scorers.reference_scorer("calibrated")
    assert scorer.photo_work is verification.local_features
    given = scorer.embed(batch.images, batch.aspects, batch.prepared)
    own = scorer.embed(batch.images, batch.aspects)
    assert given.keys() == own.keys() == {"vectors", "keypoint_count", "keypoint_xy", "keypoint_descriptors"}
    for name in own:
        np.testing.assert_array_equal(given[name], own[name], err_msg=name)
    with pytest.raises(ValueError, match="3 images but keypoints of 2"):
        scorer.embed(batch.images, batch.aspects, batch.prepared[:2])
    cosine = scorers.reference_scorer("cosine")
    assert cosine.photo_work is None
    with pytest.raises(ValueError, match="the cosine scorer has no per-photo work"):
        cosine.embed(batch.images, batch.aspects, batch.prepared)


def test_default_workers_are_the_cores_this_process_may_use() -> None:
    import os

    assert batch_decoding.default_workers() == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="decode pool 'fibres': expected one of thread, process"):
        batch_decoding.make_pool("fibres", 1)


def test_find_gives_the_same_document_with_any_workers(photos: list[Path], tmp_path: Path) -> None:
    documents = []
    for options in (["--workers", "1"], ["--workers", "3", "--decode-pool", "process"], []):
        out = tmp_path / f"out{len(documents)}.json"
        argv = [str(photos[0].parent), "--method", "phash", "--no-progress", "--no-cache", "--json", str(out)]
        assert find.main([*argv, *options]) == 0
        document = json.loads(out.read_text())
        documents.append((document["groups"], document["pairs"], document["skipped"]))
    assert documents[0] == documents[1] == documents[2]
    assert len(documents[0][2]) == 2  # both unreadable files reported


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_workers_must_be_a_positive_count(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    for parser in (find.build_parser(), embed.build_parser()):
        with pytest.raises(SystemExit):
            parser.parse_args(["photos", "--store", "s.npz", "--workers", value])
        assert f"argument --workers: {value!r}: expected a whole number >= 1" in capsys.readouterr().err
    assert cli.positive_int("4") == 4


def test_to_device_on_cpu_is_a_plain_copy() -> None:
    batch = torch.arange(6.0).reshape(2, 3)
    moved = feature_cache.to_device(batch, "cpu")
    assert moved.device.type == "cpu" and torch.equal(moved, batch) and not moved.is_pinned()
