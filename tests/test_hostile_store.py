"""The embedding store read as untrusted input, and written by runs that are killed or run at the same time.

Every crafted or damaged store is one StoreError line naming the file, refused before memory is allocated for what
it claims; rows the scorer could not have made (another row shape, not unit length, out of range) are refused too;
the stat index notices a photo rewritten in place; saves lock, clean up after killed runs and merge.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import threading
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from samespace import content_keys, embedding_store, model_scorer, scorers, store_identity
from samespace.commands import find
from samespace.embedding_store import EmbeddingStore
from samespace.store_format import FieldSpec, StoreError

FP = "f" * 64
DIM = 8
COSINE = {"vectors": FieldSpec("float32", (DIM,), unit_norm=True)}


def _unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return scorers.l2_normalise(np.random.default_rng(seed).normal(size=(n, dim)))


def _keys(n: int, start: int = 0) -> list[str]:
    return [f"{k:032x}" for k in range(start, start + n)]


def _store_file(path: Path, n: int = 5, dim: int = DIM, fields: dict | None = None) -> Path:
    """A valid cosine-like store of ``n`` unit rows and a stat entry per row."""
    store = EmbeddingStore(FP, "cosine", fields or {"vectors": FieldSpec("float32", (dim,), unit_norm=True)})
    store.add(_keys(n), {"vectors": _unit(n, dim)})
    for k, key in enumerate(_keys(n)):
        store.record(f"/photos/{k}.jpg", 100 + k, 10**18 + k, key, 1000 + k, 2 * 10**18 + k)
    store.save(path)
    return path


def _members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _forged_npy(descr: str, shape: tuple[int, ...], payload: bytes) -> bytes:
    """A .npy member whose header claims ``descr`` and ``shape`` whatever ``payload`` holds."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


def _write_zip(path: Path, members: dict[str, np.ndarray | bytes], compressed: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, value in members.items():
            kind = zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED
            z.writestr(f"{name}.npy", value if isinstance(value, bytes) else _npy(value), compress_type=kind)
    return path


def _header(members: dict[str, np.ndarray]) -> dict:
    return json.loads(members["header"].tobytes())


def _with_header(members: dict[str, np.ndarray], raw: bytes) -> dict[str, np.ndarray]:
    return {**members, "header": np.frombuffer(raw, np.uint8)}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(path: Path, fields: dict | None = None) -> str:
    """The StoreError message of loading ``path`` (which must not change), checked to be one line naming it."""
    before = _digest(path)
    with pytest.raises(StoreError) as caught:
        EmbeddingStore.load(path, FP, "cosine", fields or COSINE)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: unusable embedding store (")
    assert _digest(path) == before
    return message[len(f"{path}: unusable embedding store (") : -1]


@pytest.fixture()
def peak_memory() -> Iterator[Callable[[], int]]:
    """Peak bytes allocated (numpy arrays included) since the fixture started."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------------------------
# The header is a typed structure
# --------------------------------------------------------------------------------------------

HEADER_CASES = [
    ({"fields": []}, "header: fields [] is not an object of name: [dtype, row shape]"),
    ({"fields": {"vectors": ["<f4"]}}, "header: field vectors: ['<f4'] is not [dtype, row shape]"),
    ({"fields": {"vectors": 5}}, "header: field vectors: 5 is not [dtype, row shape]"),
    ({"fields": {"vectors": ["<f4", [8, -1]]}}, "header: field vectors: ['<f4', [8, -1]] is not [dtype, row shape]"),
    ({"fields": {"vectors": ["<f4", None]}}, "header: field vectors: ['<f4', None] is not [dtype, row shape]"),
    ({"fields": {"vectors": [5, [8]]}}, "header: field vectors: [5, [8]] is not [dtype, row shape]"),
    ({"fields": {"vectors": ["<f8", [8]]}}, "field vectors: dtype <f8, expected <f4"),
    ({"fields": {"codes": ["<u8", []]}}, "fields ['codes'] differ from the scorer's ['vectors']"),
    ({"rows": "5"}, "header: rows 5 is not a count"),
    ({"rows": -1}, "header: rows -1 is not a count"),
    ({"rows": True}, "header: rows True is not a count"),
    ({"rows": 6}, "5 keys for 6 rows in the header"),
    ({"version": True}, "samespace-embeddings version True; this SameSpace reads versions 1, 2"),
    ({"version": 3}, "samespace-embeddings version 3; this SameSpace reads versions 1, 2"),
    ({"format": "other"}, "not a samespace-embeddings store (format other)"),
    ({"method": 5}, "header: method 5 is not a string"),
    ({"extra": 1}, "header keys: missing [], unexpected ['extra']"),
]


@pytest.mark.parametrize(("change", "reason"), HEADER_CASES, ids=[r for _, r in HEADER_CASES])
def test_a_crafted_header_is_one_line_naming_the_store(tmp_path: Path, change: dict, reason: str) -> None:
    members = _members(_store_file(tmp_path / "valid.npz"))
    header = {**_header(members), **change}
    path = _write_zip(tmp_path / "s.npz", _with_header(members, json.dumps(header).encode()))
    assert _refused(path) == reason


@pytest.mark.parametrize(("raw", "reason"), [
    (b"[1, 2]", "not a samespace-embeddings store (format [1, 2])"),
    (b"\xff\xfe", "unreadable header (UnicodeDecodeError)"),
    (b"{", "unreadable header (JSONDecodeError)"),
    (b"[" * 60000, "unreadable header (RecursionError)"),
    (b" " * 70000, "header of 70,128 bytes"),
])
def test_an_unreadable_header_is_one_line(tmp_path: Path, raw: bytes, reason: str) -> None:
    members = _members(_store_file(tmp_path / "valid.npz"))
    assert _refused(_write_zip(tmp_path / "s.npz", _with_header(members, raw))) == reason


def test_missing_and_unexpected_arrays_are_named(tmp_path: Path) -> None:
    members = _members(_store_file(tmp_path / "valid.npz"))
    del members["ctimes"]
    members["extra"] = np.zeros(3)
    assert _refused(_write_zip(tmp_path / "s.npz", members)) == "arrays: missing ['ctimes'], unexpected ['extra']"


# --------------------------------------------------------------------------------------------
# Nothing is allocated for what the file only claims
# --------------------------------------------------------------------------------------------


def test_keys_declaring_a_trillion_rows_are_refused_before_allocating(
    tmp_path: Path, peak_memory: Callable[[], int]
) -> None:
    members = _members(_store_file(tmp_path / "valid.npz"))
    forged = {**members, "keys": _forged_npy("|S32", (10**12,), members["keys"].tobytes())}
    path = _write_zip(tmp_path / "s.npz", forged)
    assert _refused(path) == "keys: shape (1000000000000,) does not fit its 288 bytes"
    assert peak_memory() < 4 << 20


def test_a_deflated_member_is_refused_before_inflating(tmp_path: Path, peak_memory: Callable[[], int]) -> None:
    """keys.npy of 256 MiB deflated into a few hundred KB: refused from the zip directory alone."""
    members = _members(_store_file(tmp_path / "valid.npz"))
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as z:
        for name, array in members.items():
            if name != "keys":
                z.writestr(f"{name}.npy", _npy(array))
        info = zipfile.ZipInfo("keys.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as member:
            member.write(_forged_npy("|S32", ((256 << 20) // 32,), b""))
            zeros = bytes(1 << 20)
            for _ in range(256):
                member.write(zeros)
    assert path.stat().st_size < 2 << 20
    tracemalloc.reset_peak()
    assert _refused(path) == "member 'keys.npy' is compressed; stores are written uncompressed"
    assert peak_memory() < 4 << 20
    compressed = tmp_path / "compressed.npz"
    with open(compressed, "wb") as f:
        np.savez_compressed(f, **members)
    assert _refused(compressed) == "member 'header.npy' is compressed; stores are written uncompressed"


def test_a_member_declaring_more_bytes_than_the_file_is_refused(tmp_path: Path) -> None:
    path = _store_file(tmp_path / "s.npz")
    content = bytearray(path.read_bytes())
    entry = content.index(b"PK\x01\x02")  # the central directory entry of the first member (header.npy)
    content[entry + 20 : entry + 28] = (10**9).to_bytes(4, "little") * 2  # compressed and uncompressed sizes
    path.write_bytes(bytes(content))
    assert _refused(path) == f"member 'header.npy' declares 1,000,000,000 bytes beyond the file's {len(content):,}"


def test_a_shape_that_does_not_fill_its_member_is_refused(tmp_path: Path) -> None:
    members = _members(_store_file(tmp_path / "valid.npz"))
    short = {**members, "field_vectors": _forged_npy("<f4", (4, DIM), members["field_vectors"].tobytes())}
    assert _refused(_write_zip(tmp_path / "s.npz", short)) == "field_vectors: shape (4, 8) does not fit its 288 bytes"
    typed = {**members, "keys": members["keys"].astype("S31")}
    assert _refused(_write_zip(tmp_path / "t.npz", typed)) == "keys: |S31 array, expected |S32"


def _alarm(seconds: int) -> None:
    def fail(*_: object) -> None:
        raise AssertionError(f"no answer in {seconds} s")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def test_a_store_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)  # np.load would wait for a writer forever
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    _alarm(10)
    try:
        for path in (fifo, folder):
            with pytest.raises(StoreError, match=f"^{re.escape(str(path))}: unusable embedding store \\(not a regular "
                                                 "file\\)$"):
                embedding_store.open_store(path, FP, "cosine", COSINE, strict=True)
            with pytest.warns(UserWarning, match="not a regular file"):
                assert len(embedding_store.open_store(path, FP, "cosine", COSINE)) == 0
        with pytest.raises(OSError, match="not a regular file"):
            content_keys.content_key(fifo)
    finally:
        signal.alarm(0)
    link = tmp_path / "link.npz"
    link.symlink_to(_store_file(tmp_path / "real.npz"))  # a store the user names through a link is read
    assert len(embedding_store.open_store(link, FP, "cosine", COSINE, strict=True)) == 5


# --------------------------------------------------------------------------------------------
# Rows the scorer could not have made
# --------------------------------------------------------------------------------------------


class _Extractor(torch.nn.Module):
    out_dim = 1280


def test_scorers_declare_row_shapes_and_unit_rows() -> None:
    from samespace.siamese import SiameseNetwork

    assert scorers.HashScorer("phash").fields == {"codes": FieldSpec("uint64", ())}
    unit = FieldSpec("float32", (1280,), unit_norm=True)
    assert scorers.CosineScorer(_Extractor()).fields == {"vectors": unit}
    assert scorers.RelativeScorer(_Extractor()).fields == {"vectors": unit}
    assert scorers.CosineScorer(torch.nn.Identity()).fields == {"vectors": FieldSpec("float32", None, unit_norm=True)}
    verified = scorers.VerifiedScorer(_Extractor()).fields
    assert verified["vectors"] == unit and verified["keypoint_count"] == FieldSpec("int32", (), bounds=(0, 500))
    assert verified["keypoint_descriptors"] == FieldSpec("uint8", (500, 128))
    images = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    torch.manual_seed(0)
    for head, projection in (("concat", FieldSpec("float32", (2048,))), ("cosine", unit)):
        scorer = model_scorer.ModelScorer(SiameseNetwork("efficientnet_lite0", "none", head=head))
        assert scorer.fields == {"vectors": unit, "first": projection, "second": projection}
        rows = scorer.embed(images)  # what the model makes passes its own declaration
        assert all(spec.problem(name, rows[name]) is None for name, spec in scorer.fields.items())


def _rows_case(tmp_path: Path, vectors: np.ndarray) -> Path:
    """A store file holding ``vectors`` written as if valid (a plain float32 field)."""
    store = EmbeddingStore(FP, "cosine", {"vectors": "float32"})
    store.add(_keys(len(vectors)), {"vectors": vectors})
    store.save(tmp_path / "rows.npz")
    return tmp_path / "rows.npz"


@pytest.mark.parametrize(("vectors", "reason"), [
    (np.full((21, 1280), 3e38, np.float32), "field vectors: row 0 has length 1.07331e+40, expected unit length "
                                            "(L2-normalised vectors, within 0.001)"),
    (np.zeros((21, 1280), np.float32), "field vectors: row 0 has length 0, expected unit length (L2-normalised "
                                       "vectors, within 0.001)"),
    (_unit(21, 1280) * 0.5, "field vectors: row 0 has length 0.5, expected unit length (L2-normalised vectors, "
                            "within 0.001)"),
    (_unit(21, 640), "field vectors: rows of shape (640,), this scorer makes (1280,)"),
])
def test_rows_the_scorer_cannot_make_are_refused(tmp_path: Path, vectors: np.ndarray, reason: str) -> None:
    fields = scorers.CosineScorer(_Extractor()).fields
    assert _refused(_rows_case(tmp_path, vectors), fields) == reason


def test_keypoint_counts_beyond_the_limit_are_refused(tmp_path: Path) -> None:
    fields = {"keypoint_count": "int32"}
    store = EmbeddingStore(FP, "cosine", fields)
    store.add(_keys(2), {"keypoint_count": np.array([3, 501], np.int32)})
    store.save(tmp_path / "s.npz")
    declared = {"keypoint_count": scorers.VerifiedScorer(_Extractor()).fields["keypoint_count"]}
    assert _refused(tmp_path / "s.npz", declared) == "field keypoint_count: value 501 outside [0, 500]"


def test_new_rows_of_another_shape_are_refused_naming_the_store(tmp_path: Path) -> None:
    path = _rows_case(tmp_path, _unit(3, 640))
    store = embedding_store.open_store(path, FP, "cosine", {"vectors": "float32"})  # no declared shape: the file's
    with pytest.raises(StoreError) as caught:
        store.add(_keys(2, start=10), {"vectors": _unit(2, 1280)})
    assert str(caught.value) == f"{path}: new rows of field vectors have shape (1280,), the store's rows (640,)"
    assert len(store) == 3 and not store.changed  # nothing added
    declared = EmbeddingStore(FP, "cosine", scorers.CosineScorer(_Extractor()).fields)
    with pytest.raises(StoreError, match=r"^embedding store: new rows of field vectors have shape \(640,\)"):
        declared.add(_keys(1), {"vectors": _unit(1, 640)})
    with pytest.raises(StoreError, match="^embedding store: cannot add rows: field vectors: row 0 has length 2,"):
        declared.add(_keys(1), {"vectors": 2 * _unit(1, 1280)})


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    # efficientnet_lite_pytorch prints a line of its own whenever it loads its weights
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("Loaded pretrained")]
    assert len(lines) == 1, lines
    return lines[0]


def test_embeddings_of_absurd_rows_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scorer = scorers.reference_scorer("relative")
    fingerprint = store_identity.scorer_fingerprint(scorer)
    dim = scorer.fields["vectors"].shape[0]
    store = EmbeddingStore(fingerprint, "relative", {"vectors": "float32"})
    store.add(_keys(21), {"vectors": np.full((21, dim), 3e38, np.float32)})
    for k, key in enumerate(_keys(21)):
        store.record(tmp_path / f"{k}.jpg", 1, 1, key)
    store.save(tmp_path / "absurd.npz")
    assert find.main(["--embeddings", str(tmp_path / "absurd.npz"), "--method", "relative", "--no-progress"]) == 2
    assert _one_error_line(capsys) == (
        f"error: {tmp_path / 'absurd.npz'}: unusable embedding store (field vectors: row 0 has length 1.07331e+40, "
        "expected unit length (L2-normalised vectors, within 0.001))")


def test_embeddings_of_another_method_names_its_scorer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    phash = store_identity.scorer_fingerprint(scorers.HashScorer("phash"))
    whash = store_identity.scorer_fingerprint(scorers.HashScorer("whash"))
    store = EmbeddingStore(phash, "phash", scorers.HashScorer.fields)
    store.add(_keys(2), {"codes": np.arange(2, dtype=np.uint64)})
    store.save(tmp_path / "phash.npz")
    assert find.main(["--embeddings", str(tmp_path / "phash.npz"), "--method", "whash", "--no-progress"]) == 2
    assert _one_error_line(capsys) == (
        f"error: {tmp_path / 'phash.npz'}: unusable embedding store (made by another scorer: phash, fingerprint "
        f"{phash[:12]}...; this run: whash, {whash[:12]}...; it is read with --method phash)")


# --------------------------------------------------------------------------------------------
# The stat index
# --------------------------------------------------------------------------------------------


def _rewrite_in_place(path: Path, content: bytes, ctime_before: int) -> None:
    """Same inode, same size, mtime set back: only the ctime tells (written again until the clock has moved)."""
    st = path.stat()
    for _ in range(200):
        with open(path, "r+b") as f:
            f.write(content)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        if path.stat().st_ctime_ns != ctime_before:
            return
        time.sleep(0.005)
    raise AssertionError("the ctime did not move")


def test_a_photo_rewritten_in_place_with_its_mtime_restored_is_hashed_again(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"a" * 1000)
    store = EmbeddingStore(FP, "cosine", COSINE)
    first = store.key_for(photo)
    assert first == content_keys.content_key(photo)
    before = photo.stat()
    _rewrite_in_place(photo, b"b" * 1000, before.st_ctime_ns)
    after = photo.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert store.key_for(photo) == content_keys.content_key_of(b"b" * 1000) != first
    store.save(tmp_path / "s.npz")
    reread = EmbeddingStore.load(tmp_path / "s.npz", FP, "cosine", COSINE)
    assert reread.stat_entry(photo) == (1000, after.st_mtime_ns, reread.key_for(photo), after.st_ino,
                                        after.st_ctime_ns)


def test_remember_records_the_stat_taken_before_reading(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"photo bytes")
    store = EmbeddingStore(FP, "cosine", COSINE)
    with open(photo, "rb") as f:
        st = os.fstat(f.fileno())
        content = f.read()
    key = content_keys.content_key_of(content)
    assert key == content_keys.content_key(photo) == hashlib.blake2b(content, digest_size=16).hexdigest()
    store.remember(photo, st, "0" * 32)  # a key the file does not hash to: key_for trusts the matching stat
    assert store.changed and store.key_for(photo) == "0" * 32
    store.changed = False
    store.remember(photo, st, "0" * 32)  # the same entry again: nothing to write
    assert not store.changed
    photo.write_bytes(b"other bytes")
    assert store.key_for(photo) == content_keys.content_key_of(b"other bytes")


def test_a_version_1_store_keeps_its_rows_and_hashes_each_photo_once_more(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"photo")
    st = photo.stat()
    members = _members(_store_file(tmp_path / "valid.npz"))
    header = {**_header(members), "version": 1}
    paths = str(photo).encode()
    v1 = {**members, "header": np.frombuffer(json.dumps(header).encode(), np.uint8),
          "paths": np.frombuffer(paths, np.uint8), "path_ends": np.array([len(paths)]),
          "sizes": np.array([st.st_size]), "mtimes": np.array([st.st_mtime_ns]),
          "path_keys": np.array([_keys(1)[0]], "S32")}  # what version 1 trusted on size and mtime: a stale key
    del v1["inodes"], v1["ctimes"]
    path = _write_zip(tmp_path / "v1.npz", v1)
    store = embedding_store.open_store(path, FP, "cosine", COSINE, strict=True)
    assert len(store) == 5 and not store.changed  # an input store is not rewritten only to upgrade it
    np.testing.assert_array_equal(store.get(_keys(5))["vectors"], members["field_vectors"])
    assert store.listed_paths() == [str(photo)]  # still lists its photos (--embeddings)
    assert store.stat_entry(photo).inode == content_keys.UNKNOWN_INODE
    assert store.key_for(photo) == content_keys.content_key(photo)  # hashed, not taken from the old entry
    assert store.changed
    store.save(path)
    assert _header(_members(path))["version"] == 2 and _members(path)["inodes"].tolist() == [st.st_ino]


# --------------------------------------------------------------------------------------------
# Saving: lock, stale temporary files, concurrent runs
# --------------------------------------------------------------------------------------------


def test_save_removes_the_stale_temporary_files_of_its_store(tmp_path: Path) -> None:
    path = _store_file(tmp_path / "s.npz")
    stale = [tmp_path / ".s.npz.abcd_123.tmp", tmp_path / ".s.npz.zzzzzzzz.tmp"]  # killed runs' atomic_write files
    others = [tmp_path / ".s.npz.abcdefghi.tmp", tmp_path / ".t.npz.abcdefgh.tmp", tmp_path / "s.npz.abcdefgh.tmp"]
    for p in stale + others:
        p.write_bytes(b"partial")
    (tmp_path / ".s.npz.linkabcd.tmp").symlink_to(tmp_path / "s.npz")  # not a file it wrote: left alone
    store = embedding_store.open_store(path, FP, "cosine", COSINE)
    store.add(_keys(1, start=50), {"vectors": _unit(1, seed=5)})
    store.save(path)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
    assert (tmp_path / ".s.npz.linkabcd.tmp").is_symlink()
    assert len(EmbeddingStore.load(path, FP, "cosine", COSINE)) == 6


def test_two_runs_sharing_a_store_keep_both_runs_rows(tmp_path: Path) -> None:
    path = _store_file(tmp_path / "s.npz")
    first = embedding_store.open_store(path, FP, "cosine", COSINE)
    second = embedding_store.open_store(path, FP, "cosine", COSINE)
    first.add(_keys(2, start=100), {"vectors": _unit(2, seed=1)})
    first.record("/photos/a.jpg", 1, 2, _keys(1, start=100)[0], 3, 4)
    second.add(_keys(3, start=200), {"vectors": _unit(3, seed=2)})
    second.record("/photos/a.jpg", 1, 2, _keys(1, start=200)[0], 3, 5)  # a later version of the same photo
    second.record("/photos/b.jpg", 1, 2, _keys(1, start=201)[0], 3, 4)
    first.save(path)
    second.save(path)  # the file changed since `second` read it: merged, not overwritten
    merged = EmbeddingStore.load(path, FP, "cosine", COSINE)
    assert sorted(merged.keys()) == sorted(_keys(5) + _keys(2, start=100) + _keys(3, start=200))
    np.testing.assert_array_equal(merged.get(_keys(2, start=100))["vectors"], _unit(2, seed=1))
    np.testing.assert_array_equal(merged.get(_keys(3, start=200))["vectors"], _unit(3, seed=2))
    assert merged.stat_entry("/photos/a.jpg").key == _keys(1, start=200)[0]  # the later ctime wins
    assert merged.stat_entry("/photos/b.jpg").key == _keys(1, start=201)[0]
    assert len(merged.stat_entries()) == 7


def test_concurrent_saves_lose_no_rows(tmp_path: Path) -> None:
    path = _store_file(tmp_path / "s.npz")
    stores = [embedding_store.open_store(path, FP, "cosine", COSINE) for _ in range(4)]
    for k, store in enumerate(stores):
        store.add(_keys(10, start=1000 * (k + 1)), {"vectors": _unit(10, seed=k)})
    errors: list[BaseException] = []

    def save(store: EmbeddingStore) -> None:
        try:
            store.save(path)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(EmbeddingStore.load(path, FP, "cosine", COSINE)) == 5 + 4 * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [embedding_store.LOCK_NAME, "s.npz"]  # no temporary files


def test_an_unusable_file_written_meanwhile_is_replaced_with_one_warning(tmp_path: Path) -> None:
    path = _store_file(tmp_path / "s.npz")
    store = embedding_store.open_store(path, FP, "cosine", COSINE)
    store.add(_keys(1, start=70), {"vectors": _unit(1)})
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="the embedding store on disk cannot be merged .*; replacing it") as caught:
        store.save(path)
    assert len(caught) == 1
    assert len(EmbeddingStore.load(path, FP, "cosine", COSINE)) == 6


def test_a_damaged_store_is_replaced_without_a_second_warning(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning) as caught:
        store = embedding_store.open_store(path, FP, "cosine", COSINE)
        store.add(_keys(1), {"vectors": _unit(1)})
        store.save(path)
    assert [str(w.message) for w in caught] == [
        f"{path}: ignoring the embedding store (damaged: BadZipFile: File is not a zip file); it will be rebuilt"]
    shutil.copy(path, tmp_path / "copy.npz")
    assert len(EmbeddingStore.load(tmp_path / "copy.npz", FP, "cosine", COSINE)) == 1
