"""Seeded fuzzing of the embedding-store reader: mutated valid stores are a valid store or one StoreError line.

Several hundred mutations of valid store files (bit flips anywhere, truncations, header JSON values and types,
member shapes and dtypes, renamed / missing / extra / duplicate / compressed members, out-of-range values) are read
by EmbeddingStore.load and open_store, strict and not. No other exception, no hang, memory bounded, the file
itself unchanged; where a byte-level mutation still reads, it reads as the original store.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import signal
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from samespace import embedding_store, store_format
from samespace.embedding_store import EmbeddingStore
from samespace.store_format import FieldSpec, StoreError

FP = "a" * 64
N_MUTATIONS = 640
BYTE_LEVEL = ("flip", "truncate", "zip_structure")  # a mutation that still reads must read as the original


@dataclass(frozen=True)
class Base:
    name: str
    method: str
    fields: dict[str, FieldSpec]
    content: bytes


def _store(method: str, fields: dict[str, FieldSpec], rows: dict[str, np.ndarray], n: int) -> EmbeddingStore:
    store = EmbeddingStore(FP, method, fields)
    keys = [f"{k:032x}" for k in range(n)]
    if n:
        store.add(keys, rows)
    for k, key in enumerate(keys):
        store.record(f"/photos/é/{k}.jpg", 1000 + k, 10**18 + k, key, 50 + k, 2 * 10**18 + k)
    return store


def _bases() -> list[Base]:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 8))
    cosine = {"vectors": FieldSpec("float32", (8,), unit_norm=True)}
    local = {"vectors": FieldSpec("float32", (4,), unit_norm=True), "count": FieldSpec("int32", (), bounds=(0, 5)),
             "xy": FieldSpec("float32", (5, 2)), "descriptors": FieldSpec("uint8", (5, 16))}
    codes = {"codes": FieldSpec("uint64", ())}
    stores = {
        "cosine": (cosine, _store("cosine", cosine, {"vectors": vectors / np.linalg.norm(vectors, axis=1)[:, None]},
                                  6)),
        "local": (local, _store("verified", local, {
            "vectors": np.eye(4)[[0, 1, 2, 3, 0]], "count": np.array([0, 5, 3, 1, 2], np.int32),
            "xy": rng.uniform(0, 256, (5, 5, 2)), "descriptors": rng.integers(0, 256, (5, 5, 16), dtype=np.uint8)},
            5)),
        "codes": (codes, _store("phash", codes, {"codes": np.arange(7, dtype=np.uint64) * 2**60}, 7)),
        "empty": (cosine, _store("cosine", cosine, {}, 0)),
    }
    bases = [Base(name, s.method, fields, s.to_bytes()) for name, (fields, s) in stores.items()]
    members = _members(bases[0].content)  # version 1: no inodes / ctimes
    header = json.loads(members["header"].tobytes())
    del members["inodes"], members["ctimes"]
    members["header"] = np.frombuffer(json.dumps({**header, "version": 1}).encode(), np.uint8)
    return [*bases, Base("version1", "cosine", cosine, _zip(members))]


def _members(content: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(content), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def _npy(value: np.ndarray | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


def _zip(members: dict[str, np.ndarray | bytes] | list[tuple[str, np.ndarray | bytes]],
         compressed: frozenset[str] = frozenset()) -> bytes:
    buffer = io.BytesIO()
    items = members.items() if isinstance(members, dict) else members
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names made on purpose
        with zipfile.ZipFile(buffer, "w") as z:
            for name, value in items:
                kind = zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED
                z.writestr(f"{name}.npy", _npy(value), compress_type=kind)
    return buffer.getvalue()


ODD_VALUES: list[object] = [None, True, False, -1, 0, 1, 3, 2**70, 1.5, float("nan"), "", "x", "<f4", "|S32", [],
                            {}, [[]], [1], [-1], [8], [10**12], [8, 8], ["<f4", [8]], ["<f4"], {"a": 1}]


def _mutate_json(value: object, rng: np.random.Generator, depth: int = 0) -> object:
    """``value`` with one of its parts (itself, a key, an item) replaced, deleted or added."""
    choice = int(rng.integers(0, 4))
    if isinstance(value, dict) and value and choice < 3 and depth < 3:
        key = list(value)[int(rng.integers(0, len(value)))]
        out = dict(value)
        if choice == 0:
            del out[key]
        elif choice == 1:
            out[key] = _mutate_json(value[key], rng, depth + 1)
        else:
            out["extra" if rng.integers(0, 2) else key + "x"] = out.pop(key)
        return out
    if isinstance(value, list) and value and choice < 3 and depth < 3:
        k = int(rng.integers(0, len(value)))
        out_list = list(value)
        if choice == 0:
            del out_list[k]
        else:
            out_list[k] = _mutate_json(value[k], rng, depth + 1)
        return out_list
    return ODD_VALUES[int(rng.integers(0, len(ODD_VALUES)))]


def _odd_array(array: np.ndarray, rng: np.random.Generator) -> np.ndarray | bytes:
    """Another dtype, shape, order or row count than ``array``'s, or an .npy header claiming a shape it lacks."""
    kind = int(rng.integers(0, 8))
    if kind == 0:
        dtype = ["int8", "int64", "uint64", "float32", "float64", "S32", "S31", "U4", "bool", "complex64"]
        return array.astype(dtype[int(rng.integers(0, len(dtype)))]) if array.dtype.kind != "S" or \
            rng.integers(0, 2) else array.astype("S16")
    if kind == 1:
        return array.reshape(-1)[: max(0, array.size - 1)]
    if kind == 2:
        return np.concatenate([array, array[:1]]) if len(array) else np.zeros((1, 1), array.dtype)
    if kind == 3:
        return array.reshape(*array.shape, 1)
    if kind == 4:
        return np.asfortranarray(np.stack([array, array], axis=-1))
    if kind == 5:
        return np.zeros((), array.dtype)
    shape = tuple(int(d) for d in rng.choice([0, 1, 3, 7, 10**6, 10**12, 2**62], size=int(rng.integers(0, 4))))
    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(array.dtype) if kind == 6 else "<f8"
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + array.tobytes()[: int(rng.integers(0, array.nbytes + 1))]


def _bad_values(members: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Same dtypes and shapes, values the store must refuse (or, for a few, accept)."""
    out = dict(members)
    fields = [n for n in members if n.startswith("field_") and members[n].size]
    kind = int(rng.integers(0, 6))
    if kind == 0 and fields:
        name = fields[int(rng.integers(0, len(fields)))]
        array = out[name].copy()
        flat = array.reshape(-1)
        flat[int(rng.integers(0, flat.size))] = [np.nan, np.inf, 3e38, -1, 0, 255, 6][int(rng.integers(0, 7))] \
            if array.dtype.kind == "f" else [-1, 6, 255, 2**31 - 1][int(rng.integers(0, 4))] % (
                256 if array.dtype == np.uint8 else 2**31)
        out[name] = array
    elif kind == 1 and fields:
        name = fields[int(rng.integers(0, len(fields)))]
        with np.errstate(all="ignore"):  # 1e20 as an integer: whatever the cast makes of it
            out[name] = out[name] * np.asarray(rng.choice([0, 2, -1, 1e20]), out[name].dtype)
    elif kind == 2 and len(out["keys"]) > 1:
        keys = out["keys"].copy()
        keys[1] = keys[0]
        out["keys"] = keys
    elif kind == 3 and len(out["keys"]):
        keys = out["keys"].copy()
        keys[0] = b"\xff" * 32
        out[["keys", "path_keys"][int(rng.integers(0, 2))]] = keys
    elif kind == 4 and len(out["path_ends"]) > 1:
        ends = out["path_ends"].copy()
        ends[0] = [-5, ends[-1] + 1, 10**15][int(rng.integers(0, 3))]
        out["path_ends"] = ends
    else:
        out["paths"] = out["paths"][: len(out["paths"]) // 2]
    return out


def mutate(base: Base, kind: str, rng: np.random.Generator) -> bytes:
    content = base.content
    if kind == "flip":
        out = bytearray(content)
        for _ in range(int(rng.integers(1, 9))):
            out[int(rng.integers(0, len(out)))] ^= 1 << int(rng.integers(0, 8))
        return bytes(out)
    if kind == "truncate":
        return content[: int(rng.integers(0, len(content)))]
    if kind == "zip_structure":  # bytes of the local headers and the central directory, not the arrays
        out = bytearray(content)
        starts = [i for sig in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06") for i in _find_all(content, sig)]
        for _ in range(int(rng.integers(1, 4))):
            at = starts[int(rng.integers(0, len(starts)))] + int(rng.integers(4, 46))
            if at < len(out):
                out[at] = int(rng.integers(0, 256))
        return bytes(out)
    members = _members(content)
    if kind == "header_json":
        header = json.loads(members["header"].tobytes())
        members["header"] = np.frombuffer(json.dumps(_mutate_json(header, rng)).encode(), np.uint8)
        return _zip(members)
    if kind == "header_bytes":  # valid CRC, broken JSON
        raw = bytearray(members["header"].tobytes())
        for _ in range(int(rng.integers(1, 4))):
            raw[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
        members["header"] = np.frombuffer(bytes(raw), np.uint8)
        return _zip(members)
    names = list(members)
    name = names[int(rng.integers(0, len(names)))]
    if kind == "member_array":
        return _zip({**members, name: _odd_array(members[name], rng)})
    if kind == "members":
        action = int(rng.integers(0, 4))
        if action == 0:
            members[["renamed", "field_other", "keys2", name.upper()][int(rng.integers(0, 4))]] = members.pop(name)
        elif action == 1:
            del members[name]
        elif action == 2:
            members[["extra", "field_extra", "inodes", "ctimes"][int(rng.integers(0, 4))]] = np.zeros(3)
        else:
            return _zip([*members.items(), (name, members[name])])  # a duplicate name
        return _zip(members)
    if kind == "compressed":
        return _zip(members, frozenset(names if rng.integers(0, 2) else [name]))
    return _zip(_bad_values(members, rng))


def _find_all(content: bytes, signature: bytes) -> list[int]:
    found, at = [], content.find(signature)
    while at >= 0:
        found.append(at)
        at = content.find(signature, at + 1)
    return found


KINDS = ("flip", "truncate", "zip_structure", "header_json", "header_bytes", "member_array", "members", "compressed",
         "values")


def _read_all_ways(path: Path, base: Base) -> EmbeddingStore | None:
    """The store read by load and open_store (strict, non-strict), checked to agree; None when refused."""
    try:
        loaded: EmbeddingStore | None = EmbeddingStore.load(path, FP, base.method, base.fields)
    except StoreError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{path}: unusable embedding store ("), str(exc)
        loaded = None
    try:
        strict: EmbeddingStore | None = embedding_store.open_store(path, FP, base.method, base.fields, strict=True)
    except StoreError:
        strict = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lenient = embedding_store.open_store(path, FP, base.method, base.fields)
    assert (loaded is None) == (strict is None) == (len(caught) == 1), [str(w.message) for w in caught]
    if loaded is None:
        assert len(lenient) == 0 and lenient.changed and "ignoring the embedding store" in str(caught[0].message)
        return None
    assert strict is not None and loaded.to_bytes() == strict.to_bytes() == lenient.to_bytes()
    return loaded


def _valid(store: EmbeddingStore, base: Base) -> None:
    """What a store that reads must be: every row within the scorer's declaration, readable, writable."""
    keys = store.keys()
    rows = store.get(keys)
    for name, spec in base.fields.items():
        assert len(rows[name]) == len(keys) and spec.problem(name, rows[name]) is None
    for entry in store.stat_entries().values():
        assert isinstance(entry.key, str)
    store.to_bytes()


@pytest.fixture()
def alarm() -> Callable[[int], None]:
    def fail(*_: object) -> None:
        raise AssertionError("the reader hung")

    previous = signal.signal(signal.SIGALRM, fail)
    yield lambda seconds: signal.alarm(seconds)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# Tracing every allocation makes reading about 4x slower. Read into memory, a size a file claims would become an
# allocation: every case is traced. Memory-mapped, the fields are views of the file: every 4th case is traced (4 and
# len(KINDS) share no factor, so every kind of mutation is traced).
@pytest.mark.parametrize(("map_from", "traced_every"), [(store_format.MAP_FROM, 1), (1, 4)], ids=["read", "mapped"])
def test_mutated_stores_are_valid_or_one_store_error(tmp_path: Path, alarm: Callable[[int], None],
                                                     monkeypatch: pytest.MonkeyPatch, map_from: int,
                                                     traced_every: int) -> None:
    assert math.gcd(traced_every, len(KINDS)) == 1
    monkeypatch.setattr(store_format, "MAP_FROM", map_from)  # fields read into memory, or memory-mapped
    bases = _bases()
    for base in bases:  # the originals read, and write the same bytes
        path = tmp_path / f"{base.name}.npz"
        path.write_bytes(base.content)
        store = _read_all_ways(path, base)
        assert store is not None and store.to_bytes() == base.content or base.name == "version1"
    originals = {b.name: _read_all_ways(tmp_path / f"{b.name}.npz", b).to_bytes() for b in bases}  # type: ignore
    tracemalloc.start()
    try:
        np.empty(8 << 20, np.uint8).fill(0)  # the peak below sees numpy's allocations
        assert tracemalloc.get_traced_memory()[1] >= 8 << 20
    finally:
        tracemalloc.stop()
    rng = np.random.default_rng(2024)
    outcomes: dict[str, list[int]] = {kind: [0, 0] for kind in KINDS}
    slowest = peak = 0.0
    alarm(120)
    for case in range(N_MUTATIONS):
        if case % traced_every == 0:
            tracemalloc.start()
        try:
            kind = KINDS[case % len(KINDS)]
            base = bases[int(rng.integers(0, len(bases)))]
            content = mutate(base, kind, rng)
            path = tmp_path / "mutated.npz"
            path.write_bytes(content)
            digest = hashlib.sha256(content).hexdigest()
            start = time.perf_counter()
            try:
                store = _read_all_ways(path, base)
            except AssertionError:
                raise
            except Exception as exc:
                raise AssertionError(f"case {case} ({kind} of {base.name}): {type(exc).__name__}: {exc}") from exc
            slowest = max(slowest, time.perf_counter() - start)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, (case, kind)
            if store is not None:
                _valid(store, base)
                if kind in BYTE_LEVEL:
                    assert store.to_bytes() == originals[base.name], (case, kind)
            outcomes[kind][store is None] += 1
        finally:
            if tracemalloc.is_tracing():
                peak = max(peak, tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
    assert sum(sum(v) for v in outcomes.values()) == N_MUTATIONS >= 500
    assert all(refused > 0 for _, refused in outcomes.values()), outcomes  # every kind reaches the checks
    assert peak < 16 << 20, peak  # the files are a few KB; claims of GB allocate nothing
    assert slowest < 2.0, slowest
