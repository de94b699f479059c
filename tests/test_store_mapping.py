"""A store's large fields are memory-mapped once checked, never read whole into memory, and a save streams its rows:
the same rows, the same bytes and the same validation as a store read into memory."""

from __future__ import annotations

import hashlib
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
    assert all(isinstance(array, np.memmap) for array in loaded._arrays.values())  # type: ignore[union-attr]
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
    assert isinstance(mapped._arrays["codes"], np.memmap)  # type: ignore[index]
    assert not isinstance(in_memory._arrays["codes"], np.memmap)  # type: ignore[index]
    assert mapped.to_bytes() == in_memory.to_bytes()
    contents = store_format.read_contents(open(path, "rb"), path.stat().st_size, FP, "verified", mapped.specs)
    assert hashlib.sha256(store_format.to_bytes(contents, FP, "verified", mapped.dtypes)).digest() == \
        hashlib.sha256(mapped.to_bytes()).digest()


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
