"""The embedding-store file format, read as untrusted input.

An uncompressed ``.npz`` (numpy's zip of ``.npy`` arrays): ``header`` (UTF-8 JSON as uint8: format, version,
fingerprint, method, fields, rows), ``keys`` (``S32`` content keys), ``field_<name>`` (one array per embedding
field) and the stat index (``paths``, ``path_ends``, ``sizes``, ``mtimes``, ``ctimes``, ``inodes``,
``path_keys``). Before any array is allocated the zip directory is checked (members stored, not compressed,
inside the file, not overlapping) and so is each member's ``.npy`` header, so memory never exceeds the file's
size; the header's values are type-checked, then (:func:`read_contents`) the identity, shapes, keys, values (finite,
in range, unit-length where the scorer says so) and the stat index. Field members of :data:`MAP_FROM` bytes or more
are memory-mapped once read through and checked, not copied into memory; :func:`write` streams a file a few
thousand rows at a time. :class:`FieldSpec` says what a scorer's rows must look like. A store is a base file plus its
segments (:func:`segment_paths`), each a file of this format.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from samespace import content_keys

FORMAT = "samespace-embeddings"
VERSION = 2
READABLE_VERSIONS = (1, 2)
UNIT_NORM_TOLERANCE = 1e-3  # l2_normalise's float32 rows are within 1e-6 of unit length
SEGMENT_INFIX = ".seg-"  # store.npz.seg-<16 hex>: the rows one save appended (embedding_store.py)
MAX_HEADER_BYTES = 1 << 16  # a real header is a few hundred bytes
MAX_ROW_DIMS = 8
CHECK_ROWS = 1 << 14  # rows validated at a time, so the checks' temporaries stay small
# A member's local header: signature, then 22 bytes up to the name and extra-field lengths (the zip specification)
LOCAL_HEADER = struct.Struct("<4s22xHH")
MAP_FROM = 1 << 26  # field members of at least this many bytes (64 MiB) are memory-mapped, not read into memory
WRITE_ROWS = 1 << 12  # rows written at a time (280 MB of keypoints), so a write never copies the whole store
HEADER_KEYS = {"format", "version", "fingerprint", "method", "rows", "fields"}
STAT_V1 = {
    "paths": "uint8",
    "path_ends": "int64",
    "sizes": "int64",
    "mtimes": "int64",
    "path_keys": content_keys.KEY_DTYPE,
}
STAT_V2 = {**STAT_V1, "inodes": "uint64", "ctimes": "int64"}
# What zipfile and numpy's .npy header reader raise on malformed input (e.g. NotImplementedError: "zip file
# version 6.3"; OSError: a seek before the start).
MALFORMED = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error, OverflowError,
              NotImplementedError, OSError)


class StoreError(ValueError):
    """A store file that cannot be used: one line naming the file, with the reason (also in ``reason``)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


class UnusableError(Exception):
    """Why a store file is refused (EmbeddingStore.load adds the file's name)."""


@dataclass(frozen=True)
class FieldSpec:
    """What a scorer stores in one field: the dtype, the shape of one row when known (None: fixed by the first
    rows), whether each row is an L2-normalised vector, and the closed range every value must lie in."""

    dtype: str
    shape: tuple[int, ...] | None = None
    unit_norm: bool = False
    bounds: tuple[float, float] | None = None

    @classmethod
    def of(cls, spec: str | FieldSpec) -> FieldSpec:
        """A spec from a plain dtype name (no row shape, no value checks beyond finiteness) or a spec."""
        return spec if isinstance(spec, FieldSpec) else cls(str(spec))

    def problem(self, name: str, rows: np.ndarray) -> str | None:
        """Why ``rows`` (this field's rows, dtype already checked) cannot be stored, or None."""
        if self.shape is not None and rows.shape[1:] != tuple(self.shape):
            return f"field {name}: rows of shape {rows.shape[1:]}, this scorer makes {tuple(self.shape)}"
        floating = rows.dtype.kind == "f"
        if not len(rows) or not (floating or self.bounds or self.unit_norm):
            return None
        flat = rows.reshape(len(rows), -1)
        for start in range(0, len(flat), CHECK_ROWS):
            block = flat[start : start + CHECK_ROWS]
            if floating and not np.isfinite(block).all():
                return f"field {name}: non-finite values"
            if self.bounds is not None and block.size:
                low, high = block.min(), block.max()
                if low < self.bounds[0] or high > self.bounds[1]:
                    bad = low if low < self.bounds[0] else high
                    return f"field {name}: value {bad} outside [{self.bounds[0]:g}, {self.bounds[1]:g}]"
            if self.unit_norm:
                norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))  # float64: 3e38 squared
                off = np.flatnonzero(np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE)
                if len(off):
                    return (f"field {name}: row {start + int(off[0])} has length {norms[off[0]]:.6g}, expected unit "
                            f"length (L2-normalised vectors, within {UNIT_NORM_TOLERANCE:g})")
        return None


# --------------------------------------------------------------------------------------------
# Reading an untrusted store file
# --------------------------------------------------------------------------------------------


class Archive:
    """The ``.npy`` members of a store file, each checked before anything is allocated for it."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._file = f
        self._zip = zipfile.ZipFile(f)
        infos = self._zip.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise UnusableError("duplicate member names")
        total = 0
        for info in infos:
            label = one_line(repr(info.filename))
            if info.compress_type != zipfile.ZIP_STORED:  # np.savez writes stored members; deflate could be a bomb
                raise UnusableError(f"member {label} is compressed; stores are written uncompressed")
            if info.flag_bits & 0x1:
                raise UnusableError(f"member {label} is encrypted")
            if info.file_size != info.compress_size:
                raise UnusableError(f"member {label}: stored size {info.compress_size:,} and size "
                                     f"{info.file_size:,} differ")
            if info.header_offset < 0 or info.header_offset + info.compress_size > size:
                raise UnusableError(f"member {label} declares {info.file_size:,} bytes beyond the file's {size:,}")
            total += info.compress_size
        if total > size:
            raise UnusableError(f"members declare {total:,} bytes in a file of {size:,}")
        if any(not n.endswith(".npy") for n in names):
            others = sorted(n for n in names if not n.endswith(".npy"))
            raise UnusableError(f"members {brief(others)} are not arrays")
        self.members = {name[: -len(".npy")]: info for name, info in zip(names, infos, strict=True)}

    def read(self, name: str, dtype: str | np.dtype, ndim: int | None = 1, map_from: int | None = None) -> np.ndarray:
        """Member ``name`` as an array of exactly ``dtype`` (and ``ndim`` dimensions when given); memory-mapped
        read-only when it holds at least ``map_from`` bytes (:meth:`_mapped`), else read into memory."""
        info = self.members[name]
        expected = np.dtype(dtype)
        with self._zip.open(info) as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, found = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, found = npy_format.read_array_header_2_0(f)
            else:
                raise UnusableError(f"{name}: .npy format version {version}")
            if found != expected or fortran:
                order = "Fortran-ordered " if fortran else ""
                raise UnusableError(f"{name}: {order}{found} array, expected {expected}")
            if (ndim is not None and len(shape) != ndim) or not 1 <= len(shape) <= 1 + MAX_ROW_DIMS \
                    or any(d < 0 for d in shape):
                raise UnusableError(f"{name}: array of shape {brief(shape)}")
            count = math.prod(shape)
            if f.tell() + count * expected.itemsize != info.file_size:  # before allocating: the shape is a claim
                raise UnusableError(f"{name}: shape {brief(shape)} does not fit its {info.file_size:,} bytes")
            if map_from is not None and count * expected.itemsize >= map_from and count:
                return self._mapped(info, f, expected, shape)
            out = np.empty(count, expected)
            view = out.view(np.uint8)
            done = 0
            while done < len(view):
                chunk = f.read(min(len(view) - done, 16 * content_keys.READ_CHUNK))
                if not chunk:
                    raise UnusableError(f"{name}: truncated")
                view[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
                done += len(chunk)
            f.read(1)  # at the end: zipfile checks the CRC (a flipped bit anywhere in the member)
        return out.reshape(shape)


    def _mapped(self, info: zipfile.ZipInfo, member: IO[bytes], dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The rest of an open member, read through once so that zipfile checks its CRC (nothing kept), then mapped
        from the file. Stores are replaced by renaming a new file over them and segments are unlinked, never
        rewritten in place, so the mapped file does not change while a run reads it."""
        start = member.tell()
        while member.read(16 * content_keys.READ_CHUNK):
            pass
        self._file.seek(info.header_offset)
        local = self._file.read(LOCAL_HEADER.size)
        if len(local) != LOCAL_HEADER.size or local[:4] != b"PK\x03\x04":
            raise UnusableError(f"{info.filename}: no local header at {info.header_offset:,}")
        _, name_length, extra_length = LOCAL_HEADER.unpack(local)
        offset = info.header_offset + LOCAL_HEADER.size + name_length + extra_length + start
        return np.memmap(self._file, dtype, mode="r", offset=offset, shape=shape)


@dataclass(frozen=True)
class Header:
    version: int
    fingerprint: str
    method: str
    rows: int
    fields: dict[str, tuple[str, tuple[int, ...] | None]]


def is_int(value: object) -> bool:
    return type(value) is int  # not bool


def parse_header(raw: bytes) -> Header:
    """The JSON header as a typed structure: every key present, of its type, and nothing else."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UnusableError(f"unreadable header ({type(exc).__name__})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else doc
        raise UnusableError(f"not a {FORMAT} store (format {brief(found)})")
    version = doc.get("version")
    if not is_int(version) or version not in READABLE_VERSIONS:
        raise UnusableError(f"{FORMAT} version {brief(version)}; this SameSpace reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
    if set(doc) != HEADER_KEYS:
        missing, extra = sorted(HEADER_KEYS - set(doc)), sorted(set(doc) - HEADER_KEYS)
        raise UnusableError(f"header keys: missing {brief(missing)}, unexpected {brief(extra)}")
    fingerprint, method, rows, fields = doc["fingerprint"], doc["method"], doc["rows"], doc["fields"]
    for key, value in (("fingerprint", fingerprint), ("method", method)):
        if not isinstance(value, str):
            raise UnusableError(f"header: {key} {brief(value)} is not a string")
    if not is_int(rows) or rows < 0:
        raise UnusableError(f"header: rows {brief(rows)} is not a count")
    if not isinstance(fields, dict):
        raise UnusableError(f"header: fields {brief(fields)} is not an object of name: [dtype, row shape]")
    specs: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for name, spec in fields.items():
        valid = isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and (
            (spec[1] is None and rows == 0)
            or (isinstance(spec[1], list) and len(spec[1]) <= MAX_ROW_DIMS
                and all(is_int(d) and d >= 0 for d in spec[1])))
        if not valid:
            raise UnusableError(f"header: field {brief(name)}: {brief(spec)} is not [dtype, row shape]")
        specs[name] = (spec[0], None if spec[1] is None else tuple(spec[1]))
    return Header(version, fingerprint, method, rows, specs)


def brief(value: object) -> str:
    """A value from the file, for a message: one line, at most 40 characters (a string without quotes)."""
    text = one_line(value if isinstance(value, str) else repr(value))
    return text if len(text) <= 40 else text[:37] + "..."


def made_by(path: str | Path) -> str | None:
    """The method named in the header of the store file at ``path``; None when there is no such regular file or
    it is not a readable store (a damaged file holds nothing a rebuild would lose)."""
    try:
        f, st = content_keys.open_regular(path)
    except OSError:
        return None
    try:
        with f:
            archive = Archive(f, st.st_size)
            if "header" not in archive.members or archive.members["header"].file_size > MAX_HEADER_BYTES:
                return None
            return parse_header(archive.read("header", np.uint8).tobytes()).method
    except (UnusableError, *MALFORMED):
        return None


def check_replaceable(path: str | Path, method: str, overwrite: bool) -> None:
    """Refuse to rebuild a store of another method at ``path`` unless ``overwrite``: its embeddings may have taken
    hours, and one mistyped ``--method`` would lose them. A store of this method made with other weights or library
    versions is stale for every run, and is rebuilt (with a warning) as before. Raises StoreError."""
    other = made_by(path)
    if other is not None and other != method and not overwrite:
        raise StoreError(f"{path}: an embedding store made by {brief(other)}, not {method}{scorer_hint(other, method)}"
                         "; pass --overwrite to replace it, or choose another --store")


def scorer_hint(store_method: str, this_run: str) -> str:
    """What reads a store made by ``store_method`` (a method name from the file), for a run of ``this_run``:
    ``--method`` for another method, the checkpoint for a trained model's store; the same method with another
    fingerprint means other weights, settings or library versions, which only a rebuild matches.

    >>> scorer_hint("phash", "calibrated")
    '; it is read with --method phash'
    >>> scorer_hint("calibrated", "calibrated")
    '; made with other weights, settings or library versions'
    """
    if store_method == this_run:
        return "; made with other weights, settings or library versions"
    if store_method == "model":
        return "; it is read with the --checkpoint it was made with"
    if store_method.isascii() and store_method.isalpha() and len(store_method) <= 20:
        return f"; it is read with --method {store_method}"
    return ""


def one_line(text: str) -> str:
    """Control characters (e.g. in member names read from the file) escaped, so a message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class Contents:
    """A store file read and validated: its version, content key -> row, the field arrays (None without rows),
    the row shape of each field with rows, and the stat index (absolute path -> entry)."""

    version: int
    rows: dict[str, int]
    arrays: dict[str, np.ndarray] | None
    shapes: dict[str, tuple[int, ...] | None]
    stats: dict[str, content_keys.StatEntry]


RowSource = Callable[[str, list[str]], np.ndarray]  # (field, keys) -> those keys' rows of that field


def write(f: BinaryIO, contents: Contents, fingerprint: str, method: str, dtypes: Mapping[str, np.dtype],
          rows: RowSource | None = None) -> None:
    """Write the file of ``contents`` into ``f`` (rows in the order of ``contents.rows``, paths in the order of
    ``contents.stats``): the layout of ``np.savez``, each field streamed :data:`WRITE_ROWS` rows at a time from
    ``rows`` (default: ``contents.arrays``), so that writing a large store does not need a copy of it in memory."""
    keys, paths = list(contents.rows), list(contents.stats)
    entries = list(contents.stats.values())
    encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
    header = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "method": method, "rows": len(keys),
              "fields": {name: [dtypes[name].str, None if shape is None else list(shape)]
                         for name, shape in contents.shapes.items()}}
    small = {
        "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8),
        "keys": np.array(keys, dtype=content_keys.KEY_DTYPE).reshape(-1),
        "paths": np.frombuffer(b"".join(encoded), np.uint8),
        "path_ends": np.cumsum([len(e) for e in encoded], dtype=np.int64),
        "sizes": np.array([e.size for e in entries], np.int64),
        "mtimes": np.array([e.mtime_ns for e in entries], np.int64),
        "inodes": np.array([e.inode for e in entries], np.uint64),
        "ctimes": np.array([e.ctime_ns for e in entries], np.int64),
        "path_keys": np.array([e.key for e in entries], dtype=content_keys.KEY_DTYPE).reshape(-1),
    }
    if rows is None:
        arrays = contents.arrays or {}
        index = {key: i for i, key in enumerate(keys)}

        def rows(name: str, chunk: list[str]) -> np.ndarray:
            return arrays[name][[index[k] for k in chunk]]

    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in small.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                npy_format.write_array(member, array, allow_pickle=False)
        for name, dtype in dtypes.items():
            shape = (len(keys), *(contents.shapes[name] or ())) if keys else (0, *(contents.shapes[name] or ()))
            with archive.open(f"field_{name}.npy", mode="w", force_zip64=True) as member:
                npy_format.write_array_header_1_0(member, {"descr": npy_format.dtype_to_descr(np.dtype(dtype)),
                                                           "fortran_order": False, "shape": shape})
                for start in range(0, len(keys), WRITE_ROWS):
                    chunk = keys[start : start + WRITE_ROWS]
                    block = np.ascontiguousarray(rows(name, chunk), dtype=dtype)
                    if block.shape != (len(chunk), *shape[1:]):
                        raise ValueError(f"field {name}: rows of shape {block.shape[1:]}, expected {shape[1:]}")
                    member.write(block.data)


def read_contents(f: BinaryIO, size: int, fingerprint: str, method: str, specs: Mapping[str, FieldSpec]) -> Contents:
    """The validated contents of the store file ``f`` (``size`` bytes) for the scorer of ``fingerprint`` and
    ``method`` and its ``specs``; anything wrong is an UnusableError (or one of MALFORMED)."""
    archive = Archive(f, size)
    if "header" not in archive.members:
        raise UnusableError(f"not a {FORMAT} store (no header)")
    if archive.members["header"].file_size > MAX_HEADER_BYTES:
        raise UnusableError(f"header of {archive.members['header'].file_size:,} bytes")
    header = parse_header(archive.read("header", np.uint8).tobytes())
    # the identity before the member names: a store of another method has other fields
    if header.fingerprint != fingerprint or header.method != method:
        raise UnusableError(
            f"made by another scorer: {brief(header.method)}, fingerprint "
            f"{brief(header.fingerprint[:12])}...; this run: {method}, "
            f"{fingerprint[:12]}...{scorer_hint(header.method, method)}"
        )
    if set(header.fields) != set(specs):
        raise UnusableError(
            f"fields {brief(sorted(header.fields))} differ from the scorer's {sorted(specs)}"
        )
    for name, spec in specs.items():
        dtype, shape = header.fields[name]
        if dtype != np.dtype(specs[name].dtype).str:
            raise UnusableError(
                f"field {name}: dtype {brief(dtype)}, expected {np.dtype(specs[name].dtype).str}"
            )
        if shape is not None and spec.shape is not None and shape != tuple(spec.shape):
            raise UnusableError(
                f"field {name}: rows of shape {shape}, this scorer makes {tuple(spec.shape)}"
            )
    stat_members = STAT_V2 if header.version == 2 else STAT_V1
    expected = {"header", "keys", *stat_members, *(f"field_{name}" for name in specs)}
    if set(archive.members) != expected:
        missing, extra = sorted(expected - set(archive.members)), sorted(set(archive.members) - expected)
        raise UnusableError(
            f"arrays: missing {brief(missing)}, unexpected {brief(extra)}"
        )
    rows = header.rows
    keys = archive.read("keys", content_keys.KEY_DTYPE)
    if len(keys) != rows:
        raise UnusableError(f"{len(keys)} keys for {rows} rows in the header")
    arrays, shapes = {}, {}
    for name, spec in specs.items():
        array = archive.read(f"field_{name}", np.dtype(specs[name].dtype), ndim=None, map_from=MAP_FROM)
        if len(array) != rows or (rows and array.shape[1:] != header.fields[name][1]):
            raise UnusableError(
                f"field {name}: array of shape {array.shape}, the header says {rows} rows of "
                f"shape {header.fields[name][1]}"
            )
        problem = spec.problem(name, array)
        if problem:
            raise UnusableError(problem)
        arrays[name] = array
        if rows:
            shapes[name] = array.shape[1:]
    if len(np.unique(keys)) != len(keys):
        raise UnusableError("duplicate keys")
    try:
        row = {k.decode("ascii"): i for i, k in enumerate(keys.tolist())}
    except UnicodeDecodeError as exc:
        raise UnusableError("keys that are not ASCII") from exc
    return Contents(header.version, row, arrays if rows else None, shapes, read_stat_index(archive, stat_members))


def read_stat_index(archive: Archive, members: dict[str, str]) -> dict[str, content_keys.StatEntry]:
    """The stat index: absolute path -> its entry."""
    index = {name: archive.read(name, dtype) for name, dtype in members.items()}
    blob, ends = index["paths"], index["path_ends"]
    m = len(ends)
    if (any(len(index[name]) != m for name in members if name != "paths")
            or (m and (ends[-1] != len(blob) or ends[0] < 0 or np.any(np.diff(ends) < 0)))
            or (not m and len(blob))):
        raise UnusableError("the stat index is inconsistent")
    inodes = index["inodes"].tolist() if "inodes" in index else [content_keys.UNKNOWN_INODE] * m
    ctimes = index["ctimes"].tolist() if "ctimes" in index else [0] * m
    raw = blob.tobytes()
    starts = [0, *ends[:-1].tolist()] if m else []
    stats = {}
    try:
        for s, e, size, mtime, key, inode, ctime in zip(starts, ends.tolist(), index["sizes"].tolist(),
                                                        index["mtimes"].tolist(), index["path_keys"].tolist(),
                                                        inodes, ctimes, strict=True):
            stats[raw[s:e].decode("utf-8", "surrogateescape")] = content_keys.StatEntry(
                size, mtime, key.decode("ascii"), inode, ctime)
    except UnicodeDecodeError as exc:
        raise UnusableError("stat index keys that are not ASCII") from exc
    return stats


def segment_paths(path: str | Path) -> list[Path]:
    """The segments of the store at ``path`` (``<name>.seg-<16 hex>`` beside it), in name order."""
    path = Path(path)
    pattern = re.compile(rf"{re.escape(path.name)}{re.escape(SEGMENT_INFIX)}[0-9a-f]{{16}}")
    try:
        with os.scandir(path.parent) as entries:
            return sorted(path.with_name(e.name) for e in entries if pattern.fullmatch(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []
