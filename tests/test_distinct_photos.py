"""The duplicate-free collection builder, on small generated source folders (no Debian package needed)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samespace import labelling
from samespace.devsets import distinct, manifests, photo_sources, real_photos, reshooting

CATEGORIES = {"animals", "buildings", "indoor", "landscapes", "objects", "people"}


def _photo(rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth random picture with a few blocks, different for every draw."""
    w, h = size
    base = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)).copy()
    for _ in range(5):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        arr[y : y + 60, x : x + 60] = rng.integers(0, 256, size=3)
    return Image.fromarray(arr)


def _source(folder: Path, name: str, files: dict[str, Image.Image]) -> photo_sources.Source:
    """A ``dir`` source of one place per file, categories taken in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    places = []
    for k, (file, img) in enumerate(sorted(files.items())):
        img.save(folder / file)
        places.append(photo_sources.Place(Path(file).stem, (file,), sorted(CATEGORIES)[k % len(CATEGORIES)]))
    return photo_sources.Source(name, "dir", str(folder), "1", f"licence of {name}", labelling.SPLITS[1],
                                tuple(places))


@pytest.fixture()
def two_sources(tmp_path: Path) -> list[photo_sources.Source]:
    rng = np.random.default_rng(7)
    alpha = {f"a{k}.png": _photo(rng) for k in range(5)}
    beta = {f"b{k}.jpg": _photo(rng, (400, 300)) for k in range(4)}
    return [_source(tmp_path / "alpha", "alpha", alpha), _source(tmp_path / "beta", "beta", beta)]


def test_shipped_tables_one_photo_per_place() -> None:
    sources, dropped = distinct.load_tables()
    assert sum(len(s.places) for s in sources) == 119
    for source in sources:
        assert source.kind == "deb" and source.version and source.licence
        assert source.package not in photo_sources.HELD_OUT
        assert source.split == labelling.SPLITS[1]
        for place in source.places:
            assert len(place.shots) == 1 and place.category in CATEGORIES
    assert dropped and all(d.reason for d in dropped)
    assert not {d.package for d in dropped} & photo_sources.HELD_OUT


def test_check_tables_refuses(two_sources: list[photo_sources.Source]) -> None:
    alpha, beta = two_sources
    two_shots = photo_sources.Place("pair", ("a0.png", "a1.png"), "indoor")
    with pytest.raises(photo_sources.RealPhotosError, match="one photo per place"):
        distinct.check_tables([dataclasses.replace(alpha, places=(two_shots,))])
    again = photo_sources.Place("again", ("a0.png",), "indoor")
    twice = dataclasses.replace(alpha, places=alpha.places + (again,))
    with pytest.raises(photo_sources.RealPhotosError, match="listed twice"):
        distinct.check_tables([twice])
    with pytest.raises(photo_sources.RealPhotosError, match="both used and dropped"):
        distinct.check_tables([alpha], [distinct.Dropped(alpha.package, "a0.png", "a copy")])
    held = dataclasses.replace(beta, name="mate-backgrounds", package="mate-backgrounds")
    with pytest.raises(photo_sources.RealPhotosError, match="held out"):
        distinct.check_tables([held])
    distinct.check_tables(two_sources, [distinct.Dropped(alpha.package, "elsewhere.png", "same place")])


def test_near_copies_finds_copies_not_different_photos() -> None:
    rng = np.random.default_rng(3)
    photos = [_photo(rng) for _ in range(6)]
    buffer = io.BytesIO()
    photos[2].resize((200, 150)).save(buffer, "JPEG", quality=40)
    copy = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    hashes = [distinct.photo_hash(p) for p in photos]
    assert distinct.near_copies(hashes) == []
    found = distinct.near_copies(hashes + [distinct.photo_hash(copy)])
    assert [(i, j) for i, j, _ in found] == [(2, 6)]
    across = distinct.near_copies(hashes, [distinct.photo_hash(copy)])
    assert [(i, j) for i, j, _ in across] == [(2, 0)]
    assert distinct.near_copies([]) == [] and distinct.near_copies(hashes, []) == []


def test_build_writes_one_group_per_photo(two_sources: list[photo_sources.Source], tmp_path: Path) -> None:
    dropped = [distinct.Dropped("x", "y.jpg", "a copy of a1")]
    counts = distinct.build_distinct(tmp_path / "out", two_sources, dropped, cache_dir=tmp_path / "cache")
    assert counts == {"images": 9, "sources": 2, "dropped": 1}
    split = tmp_path / "out" / distinct.SPLIT
    paths = labelling.find_images(split)
    assert len(paths) == 9 and all(labelling.parse_name(p.name) is not None for p in paths)
    assert len(set(labelling.group_ids(paths, split).tolist())) == 9  # every photo its own group
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "JPEG" and max(img.size) <= reshooting.MAX_SIDE
    assert manifests.verify(tmp_path / "out") == []
    rows = manifests.read_manifest(tmp_path / "out")
    assert {r["source"] for r in rows} == {"alpha", "beta"} and len({r["group"] for r in rows}) == 9
    for row in rows:
        original = Path(next(s.package for s in two_sources if s.name == row["source"])) / row["original"]
        assert row["source_sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()
    with open(tmp_path / "out" / distinct.DROPPED, newline="") as f:
        assert list(csv.DictReader(f)) == [{"package": "x", "path": "y.jpg", "reason": "a copy of a1"}]
    again = distinct.build_distinct(tmp_path / "again", two_sources, dropped, cache_dir=tmp_path / "cache")
    assert again == counts
    assert [p.read_bytes() for p in labelling.find_images(tmp_path / "again" / distinct.SPLIT)] == [
        p.read_bytes() for p in paths
    ]  # deterministic
    with pytest.raises(photo_sources.RealPhotosError, match="already exists"):
        distinct.build_distinct(tmp_path / "out", two_sources, dropped, cache_dir=tmp_path / "cache")


def test_build_refuses_copies_small_photos_and_excluded(two_sources: list[photo_sources.Source],
                                                        tmp_path: Path) -> None:
    alpha, beta = two_sources
    copy_folder = tmp_path / "copies"
    copied = Image.open(Path(alpha.package) / "a3.png").resize((300, 225))
    same = _source(copy_folder, "gamma", {"c.jpg": copied})
    with pytest.raises(photo_sources.RealPhotosError, match="a3.png and .*c.jpg|c.jpg and .*a3.png"):
        distinct.build_distinct(tmp_path / "o1", [alpha, same], cache_dir=tmp_path / "cache")
    byte_copy = _source(tmp_path / "bytes", "delta", {})
    (tmp_path / "bytes" / "a3.png").write_bytes((Path(alpha.package) / "a3.png").read_bytes())
    byte_copy = dataclasses.replace(byte_copy, places=(photo_sources.Place("x", ("a3.png",), "indoor"),))
    with pytest.raises(photo_sources.RealPhotosError, match="the same file"):
        distinct.build_distinct(tmp_path / "o2", [alpha, byte_copy], cache_dir=tmp_path / "cache")
    for size in ((300, 150), (1400, 300)):  # small, or a strip that is small once resized to 640 px
        small = _source(tmp_path / f"small{size[0]}", "small", {"s.png": _photo(np.random.default_rng(1), size)})
        with pytest.raises(photo_sources.RealPhotosError, match="under 200 px on its short side"):
            distinct.build_distinct(tmp_path / "o3", [small], cache_dir=tmp_path / "cache")
    reference = tmp_path / "reference" / "indoor"
    reference.mkdir(parents=True)
    Image.open(Path(beta.package) / "b1.jpg").save(reference / "ref_1_1.jpg", quality=60)
    with pytest.raises(photo_sources.RealPhotosError, match="b1.jpg: the same picture as"):
        distinct.build_distinct(tmp_path / "o4", two_sources, cache_dir=tmp_path / "cache",
                                exclude_like=[tmp_path / "reference"])
    for out in ("o1", "o2", "o3", "o4"):  # a refused build writes nothing
        assert not (tmp_path / out).exists()


def test_cli_lists_the_distinct_sources(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert real_photos.main(["--cache-dir", str(tmp_path), "sources", "--distinct"]) == 0
    out = capsys.readouterr().out
    sources, _ = distinct.load_tables()
    assert all(f"{s.package}={s.version}" in out for s in sources) and "not fetched" in out
