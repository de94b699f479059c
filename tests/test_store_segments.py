"""The embedding store grows by segments: a save writes only its new rows beside the base, concurrent runs keep each
other's rows, segments are validated like any store file, and compaction folds them back into the base."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from samespace import embedding_store, outputs, scorers, store_format
from samespace.embedding_store import EmbeddingStore
from samespace.store_format import FieldSpec, StoreError

FP = "e" * 64
DIM = 16
FIELDS = {"vectors": FieldSpec("float32", (DIM,), unit_norm=True)}
BASE_ROWS = 400  # segments of a few rows stay far below COMPACT_SHARE of a base this size


def _keys(n: int, start: int = 0) -> list[str]:
    return [f"{k:032x}" for k in range(start, start + n)]


def _unit(n: int, seed: int) -> np.ndarray:
    return scorers.l2_normalise(np.random.default_rng(seed).normal(size=(n, DIM))).astype(np.float32)


def _add(store: EmbeddingStore, n: int, start: int, seed: int) -> None:
    """``n`` rows keyed from ``start`` and a stat entry per row (``/photos/<key number>.jpg``)."""
    store.add(_keys(n, start), {"vectors": _unit(n, seed)})
    for k, key in enumerate(_keys(n, start)):
        store.record(f"/photos/{start + k}.jpg", 100 + k, 10**18 + k, key, 1000 + k, 2 * 10**18 + k)


def _base(path: Path, n: int = BASE_ROWS) -> Path:
    store = EmbeddingStore(FP, "cosine", FIELDS)
    _add(store, n, 0, seed=0)
    store.save(path)
    return path


def _open(path: Path, strict: bool = False) -> EmbeddingStore:
    return embedding_store.open_store(path, FP, "cosine", FIELDS, strict=strict)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_save_writes_only_the_new_rows_as_a_segment(tmp_path: Path) -> None:
    path = _base(tmp_path / "s.npz")
    before = _digest(path)
    store = _open(path)
    assert not store.changed and len(store) == BASE_ROWS
    _add(store, 3, 10_000, seed=1)
    store.record("/photos/0.jpg", 5, 6, _keys(1, 10_000)[0], 7, 3 * 10**18)  # a photo edited since
    store.save(path)
    assert _digest(path) == before  # the base is not rewritten
    [segment] = store_format.segment_paths(path)
    assert segment.name.startswith("s.npz.seg-") and len(segment.name) == len("s.npz.seg-") + 16
    alone = EmbeddingStore.load(segment, FP, "cosine", FIELDS)  # a segment is a store file of its own
    assert sorted(alone.keys()) == _keys(3, 10_000)
    assert sorted(alone.stat_entries()) == ["/photos/0.jpg", "/photos/10000.jpg", "/photos/10001.jpg",
                                            "/photos/10002.jpg"]
    reread = _open(path)
    assert len(reread) == BASE_ROWS + 3 and not reread.changed
    np.testing.assert_array_equal(reread.get(_keys(3, 10_000))["vectors"], _unit(3, seed=1))
    assert reread.stat_entry("/photos/0.jpg").key == _keys(1, 10_000)[0]  # the segment's later entry wins
    assert len(reread.stat_entries()) == BASE_ROWS + 3
    reread.save(path)  # nothing new: nothing written
    assert store_format.segment_paths(path) == [segment]


CONCURRENT_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from tests.test_store_segments import FIELDS, FP, _add
    from samespace import embedding_store
    path, start, go = Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    store = embedding_store.open_store(path, FP, "cosine", FIELDS)
    _add(store, 5, start, seed=start)
    while not go.exists():  # both runs read the store before either saves
        time.sleep(0.01)
    store.save(path)
""")


def test_two_concurrent_runs_keep_every_row_of_both(tmp_path: Path) -> None:
    path = _base(tmp_path / "s.npz")
    go = tmp_path / "go"
    root = str(Path(__file__).resolve().parent.parent)
    runs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_RUN, root, str(path), str(start), str(go)])
            for start in (20_000, 30_000)]
    go.touch()
    assert [run.wait(timeout=120) for run in runs] == [0, 0]
    assert len(store_format.segment_paths(path)) == 2  # one per run, neither rewrote the base
    third = _open(path, strict=True)
    assert sorted(third.keys()) == sorted(_keys(BASE_ROWS) + _keys(5, 20_000) + _keys(5, 30_000))
    np.testing.assert_array_equal(third.get(_keys(5, 20_000))["vectors"], _unit(5, seed=20_000))
    np.testing.assert_array_equal(third.get(_keys(5, 30_000))["vectors"], _unit(5, seed=30_000))
    assert {"/photos/20004.jpg", "/photos/30004.jpg"} <= set(third.listed_paths())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_compaction_folds_the_segments_into_the_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding_store, "COMPACT_SEGMENTS", 2)
    path = _base(tmp_path / "s.npz")
    for k in range(2):
        store = _open(path)
        _add(store, 2, 40_000 + 10 * k, seed=k)
        store.save(path)
    assert len(store_format.segment_paths(path)) == 2
    store = _open(path)
    _add(store, 2, 50_000, seed=9)
    store.save(path)  # a third segment would be over the count: compacted instead
    assert store_format.segment_paths(path) == []
    expected = sorted(_keys(BASE_ROWS) + _keys(2, 40_000) + _keys(2, 40_010) + _keys(2, 50_000))
    compacted = EmbeddingStore.load(path, FP, "cosine", FIELDS)
    assert sorted(compacted.keys()) == expected and len(compacted.stat_entries()) == len(expected)
    assert path.read_bytes() == compacted.to_bytes()  # the same bytes whatever the history


def test_segments_over_a_share_of_the_base_are_compacted(tmp_path: Path) -> None:
    path = _base(tmp_path / "s.npz", n=4)  # a tiny base: any segment is over COMPACT_SHARE of it
    store = _open(path)
    _add(store, 2, 60_000, seed=3)
    store.save(path)
    assert store_format.segment_paths(path) == []
    assert len(EmbeddingStore.load(path, FP, "cosine", FIELDS)) == 6


def _segment_of(path: Path, start: int, fields: dict | None = None, fingerprint: str = FP) -> Path:
    """A valid one-row segment beside ``path``, written as a save would."""
    part = EmbeddingStore(fingerprint, "cosine", fields or FIELDS)
    part.add(_keys(1, start), {"vectors": _unit(1, seed=start)})
    segment = path.with_name(f"{path.name}.seg-{start:016x}")
    outputs.atomic_write(segment, part.to_bytes())
    return segment


def test_a_hostile_segment_is_one_line_naming_it_or_one_warning(tmp_path: Path) -> None:
    path = _base(tmp_path / "s.npz")
    good = _segment_of(path, 70_000)
    bad = path.with_name(f"{path.name}.seg-{'f' * 16}")
    bad.write_bytes(good.read_bytes()[:-40])  # truncated
    with pytest.raises(StoreError) as caught:
        _open(path, strict=True)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{bad}: unusable embedding store (")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        store = _open(path)
    assert [str(w.message) for w in seen] == [
        f"{bad}: ignoring this segment of the embedding store ({caught.value.reason}); the next save removes it"]
    assert len(store) == BASE_ROWS + 1 and store.changed  # the base and the good segment are used
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        store.save(path)  # compacts: the refused segment is removed without a second warning
    assert not seen
    assert store_format.segment_paths(path) == []
    assert sorted(_open(path, strict=True).keys()) == sorted(_keys(BASE_ROWS) + _keys(1, 70_000))


@pytest.mark.parametrize("kind", ["another scorer", "another row shape", "not unit length", "not a store"])
def test_segments_are_checked_like_a_store(tmp_path: Path, kind: str) -> None:
    path = _base(tmp_path / "s.npz")
    if kind == "another scorer":
        segment = _segment_of(path, 1, fingerprint="0" * 64)
        reason = "made by another scorer"
    elif kind == "another row shape":
        segment = path.with_name(f"{path.name}.seg-{1:016x}")
        vectors = scorers.l2_normalise(np.ones((1, DIM + 1))).astype(np.float32)
        part = EmbeddingStore(FP, "cosine", {"vectors": "float32"})
        part.add(_keys(1, 1), {"vectors": vectors})
        outputs.atomic_write(segment, part.to_bytes())
        reason = "rows of shape (17,), this scorer makes (16,)"
    elif kind == "not unit length":
        part = EmbeddingStore(FP, "cosine", {"vectors": "float32"})
        part.add(_keys(1, 1), {"vectors": np.full((1, DIM), 2.0, np.float32)})
        segment = path.with_name(f"{path.name}.seg-{1:016x}")
        outputs.atomic_write(segment, part.to_bytes())
        reason = "expected unit length"
    else:
        segment = path.with_name(f"{path.name}.seg-{1:016x}")
        segment.write_bytes(b"\xff\xd8\xff not a store")
        reason = "damaged: BadZipFile"
    expected = f"^{re.escape(str(segment))}: unusable embedding store \\(.*{re.escape(reason)}"
    with pytest.raises(StoreError, match=expected):
        _open(path, strict=True)


def test_a_single_file_store_reads_and_grows_by_segments(tmp_path: Path) -> None:
    """A store written before segments existed is a base alone; the upgrade needs no rewrite."""
    path = tmp_path / "old.npz"
    store = EmbeddingStore(FP, "cosine", FIELDS)
    _add(store, BASE_ROWS, 0, seed=0)
    outputs.atomic_write(path, store.to_bytes())  # what every earlier save wrote: one file
    before = _digest(path)
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(bytes(z["header"]))["version"] == 2
    reread = _open(path, strict=True)
    assert sorted(reread.keys()) == _keys(BASE_ROWS)
    _add(reread, 1, 80_000, seed=8)
    reread.save(path)
    assert _digest(path) == before and len(store_format.segment_paths(path)) == 1
    assert len(_open(path, strict=True)) == BASE_ROWS + 1


def test_a_base_replaced_meanwhile_is_merged_not_appended_to(tmp_path: Path) -> None:
    path = _base(tmp_path / "s.npz")
    first, second = _open(path), _open(path)
    _add(first, 2, 90_000, seed=1)
    _add(second, 2, 91_000, seed=2)
    first.save(path)
    first.save(path)  # nothing new
    store = _open(path)
    _add(store, 1, 92_000, seed=3)
    for segment in store_format.segment_paths(path):  # another run compacts meanwhile
        segment.unlink()
    outputs.atomic_write(path, store.to_bytes())
    second.save(path)  # its base is not the file on disk: compaction merges the new base
    assert store_format.segment_paths(path) == []
    assert sorted(_open(path, strict=True).keys()) == sorted(
        _keys(BASE_ROWS) + _keys(2, 90_000) + _keys(2, 91_000) + _keys(1, 92_000))


def test_a_segment_compacted_while_read_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _base(tmp_path / "s.npz")
    store = _open(path)
    _add(store, 2, 95_000, seed=5)
    store.save(path)
    [segment] = store_format.segment_paths(path)
    load_file = EmbeddingStore._load_file
    compacted = []

    def compact_first(cls: type, file: Path, *args: object) -> EmbeddingStore:
        """Another run compacts the store just as this one opens the segment."""
        if Path(file) == segment and not compacted:
            compacted.append(file)
            everything = _open(path)
            everything._rebuild = True
            everything.save(path)
        return load_file(file, *args)

    monkeypatch.setattr(EmbeddingStore, "_load_file", classmethod(compact_first))
    reread = _open(path, strict=True)
    assert compacted and not segment.exists()
    assert sorted(reread.keys()) == sorted(_keys(BASE_ROWS) + _keys(2, 95_000))


def test_stale_temporary_segments_are_removed(tmp_path: Path) -> None:
    path = _base(tmp_path / "s.npz")
    stale = tmp_path / f".s.npz.seg-{'a' * 16}.abcdefgh.tmp"
    kept = tmp_path / f".s.npz.seg-{'a' * 15}.abcdefgh.tmp"
    stale.write_bytes(b"partial")
    kept.write_bytes(b"other")
    store = _open(path)
    _add(store, 1, 99_000, seed=1)
    store.save(path)
    assert not stale.exists() and kept.exists()


def test_remove_store_deletes_the_base_and_its_segments(tmp_path: Path) -> None:
    path = _base(tmp_path / "s.npz")
    _segment_of(path, 1)
    other = _segment_of(tmp_path / "t.npz", 2)
    embedding_store.remove_store(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([embedding_store.LOCK_NAME, other.name])
