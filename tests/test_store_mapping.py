"""A store's large fields are memory-mapped once checked, never read whole into memory, and a save streams its rows:
the same rows, the same bytes and the same validation as a store read into memory."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from samespace import embedding_store, scorers, store_format
from samespace.embedding_store import EmbeddingStore
from samespace.store_format import FieldSpec, StoreError

FP = "d" * 64
FIELDS = {"vectors": FieldSpec("float32", (8,), unit_norm=True), "codes": FieldSpec("uint8", (4, 16))}


def _keys(n: int, start: int = 0) -> list[str]:
    return [f"{k:032x}" for k in range(start, start + n)]


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"vectors": scorers.l2_normalise(rng.normal(size=(n, 8))).astype(np.float32),
            "codes": rng.integers(0, 256, (n, 4, 16), dtype=np.uint8)}


def _open(path: Path, strict: bool = True) -> EmbeddingStore:
    return embedding_store.open_store(path, FP, "verified", FIELDS, strict=strict)


@pytest.fixture()
def mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_format, "MAP_FROM", 1)  # every field member is mapped


def test_large_fields_are_mapped_and_read_back_as_stored(tmp_path: Path, mapped: None) -> None:
    path = tmp_path / "s.npz"
    store = EmbeddingStore(FP, "verified", FIELDS)
    store.add(_keys(300), _rows(300, 0))
    store.save(path)
    loaded = _open(path)
    assert all(isinstance(array, np.memmap) for block in loaded._data.blocks() for array in block.values())
    assert loaded.rows_in_memory() == 0
    keys = _keys(300)[::-7]
    for name in FIELDS:
        np.testing.assert_array_equal(loaded.get_field(name, keys), store.get_field(name, keys))
    # New rows beside the mapped ones: one get gathers from both, in the order asked
    loaded.add(_keys(50, 1000), _rows(50, 1))
    assert loaded.rows_in_memory() == 50
    mixed = [_keys(50, 1000)[3], _keys(300)[5], _keys(50, 1000)[0], _keys(300)[299]]
    expected = np.concatenate([_rows(50, 1)["codes"][[3]], _rows(300, 0)["codes"][[5]], _rows(50, 1)["codes"][[0]],
                               _rows(300, 0)["codes"][[299]]])
    np.testing.assert_array_equal(loaded.get(mixed)["codes"], expected)
    # A save appends a segment; a compaction streams the whole store into a new base: both read back the same
    loaded.save(path)
    assert len(store_format.segment_paths(path)) == 1
    again = _open(path)
    again.save(path, compact=True)
    assert store_format.segment_paths(path) == []
    final = _open(path)
    assert sorted(final.keys()) == sorted(_keys(300) + _keys(50, 1000))
    np.testing.assert_array_equal(final.get(mixed)["codes"], expected)


def test_a_mapped_store_writes_the_bytes_of_one_read_into_memory(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.npz"
    store = EmbeddingStore(FP, "verified", FIELDS)
    store.add(_keys(5000), _rows(5000, 2))  # more rows than one streamed block (WRITE_ROWS)
    assert 5000 > store_format.WRITE_ROWS
    store.save(path)
    in_memory = _open(path)
    monkeypatch.setattr(store_format, "MAP_FROM", 1)
    mapped = _open(path)
    assert mapped.rows_in_memory() == 0 and in_memory.rows_in_memory() == 5000
    assert mapped.to_bytes() == in_memory.to_bytes()
    with open(path, "rb") as f:  # the arrays as read, written by store_format.write on its own
        contents = store_format.read_contents(f, path.stat().st_size, FP, "verified", mapped.specs)
        buffer = io.BytesIO()
        store_format.write(buffer, contents, FP, "verified", mapped.dtypes)
    assert hashlib.sha256(buffer.getvalue()).digest() == hashlib.sha256(mapped.to_bytes()).digest()


@pytest.mark.parametrize("where", ["codes", "vectors"])
def test_a_flipped_bit_in_a_mapped_field_is_refused(tmp_path: Path, mapped: None, where: str) -> None:
    """Mapping does not skip the checks: the member is read through once (zipfile checks its CRC) and its values
    checked, as a member read into memory is."""
    path = tmp_path / "s.npz"
    store = EmbeddingStore(FP, "verified", FIELDS)
    store.add(_keys(100), _rows(100, 3))
    store.save(path)
    blob = bytearray(path.read_bytes())
    row = store.get_field(where, _keys(100)[40:41]).tobytes()
    at = bytes(blob).index(row)
    blob[at + 5] ^= 0x10
    path.write_bytes(bytes(blob))
    with pytest.raises(StoreError, match=r"s\.npz: unusable embedding store \(damaged"):
        _open(path)
    with pytest.warns(UserWarning, match="ignoring the embedding store"):
        assert len(_open(path, strict=False)) == 0


def test_merging_mapped_stores_adopts_their_rows_without_copying(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What embed.py does with its shards and a read does with segments: mapped rows stay mapped, rows both stores
    hold are kept once, and the merged store writes the bytes of one merged in memory."""
    shards = []
    for k, (start, n) in enumerate([(0, 300), (250, 200)]):  # 50 keys in both
        shard = EmbeddingStore(FP, "verified", FIELDS)
        rows = _rows(n, 10 + k)
        if k:
            rows = {name: np.concatenate([_rows(300, 10)[name][250:], array[50:]]) for name, array in rows.items()}
        shard.add(_keys(n, start), rows)
        shard.record(f"/photos/{k}.jpg", 1, 2, _keys(1, start)[0])
        shard.save(tmp_path / f"part{k}.npz")
        shards.append(tmp_path / f"part{k}.npz")
    copied = embedding_store.merge_files(shards, FP, "verified", FIELDS)
    assert copied.rows_in_memory() == 450  # copied: each key once
    monkeypatch.setattr(store_format, "MAP_FROM", 1)
    adopted = embedding_store.merge_files(shards, FP, "verified", FIELDS)
    assert adopted.rows_in_memory() == 0 and len(adopted) == 450 == len(copied)
    keys = _keys(450)[::-11]
    for name in FIELDS:
        np.testing.assert_array_equal(adopted.get_field(name, keys), copied.get_field(name, keys))
    assert adopted.to_bytes() == copied.to_bytes()
    adopted.add(_keys(5, 9000), _rows(5, 99))  # new rows after adopted ones
    assert adopted.rows_in_memory() == 5
    np.testing.assert_array_equal(adopted.get([_keys(5, 9000)[4], _keys(1, 449)[0]])["codes"],
                                  np.concatenate([_rows(5, 99)["codes"][4:], copied.get(_keys(1, 449))["codes"]]))


def test_a_mapped_store_of_another_row_shape_is_not_merged(tmp_path: Path, mapped: None) -> None:
    other_fields = {"vectors": FIELDS["vectors"], "codes": FieldSpec("uint8", (4, 8))}
    other = EmbeddingStore(FP, "verified", other_fields)
    other.add(_keys(3), {"vectors": _rows(3, 0)["vectors"], "codes": np.zeros((3, 4, 8), np.uint8)})
    other.save(tmp_path / "other.npz")
    loose = {"vectors": FIELDS["vectors"], "codes": FieldSpec("uint8")}  # shapes fixed by the rows
    mine = EmbeddingStore(FP, "verified", loose)
    mine.add(_keys(2, 100), {"vectors": _rows(2, 1)["vectors"], "codes": np.zeros((2, 4, 16), np.uint8)})
    read = embedding_store.open_store(tmp_path / "other.npz", FP, "verified", loose, strict=True)
    assert read.rows_in_memory() == 0
    with pytest.raises(StoreError, match=r"new rows of field codes have shape \(4, 8\), the store's rows \(4, 16\)"):
        mine.merge(read)
    assert len(mine) == 2
