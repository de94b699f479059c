"""Decoding on a pool of workers: the same pixels, keys, order and skipped files whatever the pool and its size;
--workers and --decode-pool on the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from samespace import batch_decoding, cli, content_keys, feature_cache
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
