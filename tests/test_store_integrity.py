"""The embedding store never returns one photo's embedding for another: an in-place edit that keeps the size and
mtime is re-hashed, and a photo swapped between hashing and decoding is filed under the key of the bytes decoded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from samespace import content_keys, decoding, embedding_store, labelling, scorers, store_identity
from samespace.commands import find

FAST = ["--method", "phash", "--no-progress"]


@pytest.fixture()
def photos(tmp_path: Path, test_dir: Path) -> Path:
    """Six sample photos padded to one size (a JPEG decoder ignores bytes after the image's end)."""
    root = tmp_path / "photos"
    root.mkdir()
    sources = labelling.find_images(test_dir)[:6]
    size = max(p.stat().st_size for p in sources) + 16
    for path in sources:
        content = path.read_bytes()
        (root / path.name).write_bytes(content + b"\0" * (size - len(content)))
    return root


def _pairs(argv: list[str], out: Path) -> set[tuple[str, str, float]]:
    assert find.main([*argv, *FAST, "--json", str(out)]) == 0
    return {(Path(a).name, Path(b).name, s) for a, b, s, _ in json.loads(out.read_text())["pairs"]}


def test_an_in_place_edit_keeping_size_and_mtime_is_rehashed(photos: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.npz"
    first, second = sorted(photos.iterdir())[:2]
    _pairs([str(photos), "--store", str(store)], tmp_path / "a.json")
    st = second.stat()
    second.write_bytes(first.read_bytes())  # the same size: the fixture padded every photo to one length
    os.utime(second, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert second.stat().st_size == st.st_size and second.stat().st_mtime_ns == st.st_mtime_ns
    expected = _pairs([str(photos), "--no-cache"], tmp_path / "b.json")
    assert (first.name, second.name, 1.0) in expected
    assert _pairs([str(photos), "--store", str(store)], tmp_path / "c.json") == expected


def test_a_photo_swapped_while_decoding_never_poisons_the_store(photos: Path, tmp_path: Path, monkeypatch) -> None:
    store = tmp_path / "store.npz"
    victim, other = sorted(photos.iterdir())[1], sorted(photos.iterdir())[4]
    expected = _pairs([str(photos), "--no-cache"], tmp_path / "ref.json")
    read_photo = decoding.read_photo
    swapped = []

    def swap_during_read(path: str | Path) -> tuple[bytes, os.stat_result]:
        """Another program renames a different photo over ``victim`` just before it is read, then puts it back."""
        if Path(path) == victim and not swapped:
            saved = tmp_path / "saved.jpg"
            os.replace(victim, saved)
            shutil.copyfile(other, victim)
            try:
                return read_photo(path)
            finally:
                os.replace(saved, victim)
                swapped.append(path)
        return read_photo(path)

    monkeypatch.setattr(decoding, "read_photo", swap_during_read)
    _pairs([str(photos), "--store", str(store)], tmp_path / "a.json")  # this run may see the swapped bytes
    assert swapped
    monkeypatch.undo()
    # the store holds no row of the other photo under the victim's key ...
    loaded = embedding_store.open_store(store, *_identity(store))
    victim_key = content_keys.content_key(victim)
    other_key = content_keys.content_key(other)
    assert victim_key not in loaded or victim_key != other_key
    # ... and every later run reports what a run without the store reports: no false pair, no missed pair
    assert _pairs([str(photos), "--store", str(store)], tmp_path / "b.json") == expected
    assert _pairs([str(photos), "--store", str(store)], tmp_path / "c.json") == expected


def _identity(store: Path) -> tuple[str, str, dict[str, str]]:
    """(fingerprint, method, fields) of the phash scorer that wrote ``store``."""
    scorer = scorers.HashScorer("phash")
    return store_identity.scorer_fingerprint(scorer), scorer.name, scorer.fields
