"""The embedding-store file format, read as untrusted input.

An uncompressed ``.npz`` (numpy's zip of ``.npy`` arrays): ``header`` (UTF-8 JSON as uint8: format, version,
fingerprint, method, fields, rows), ``keys`` (``S32`` content keys), ``field_<name>`` (one array per embedding
field) and the stat index (``paths``, ``path_ends``, ``sizes``, ``mtimes``, ``ctimes``, ``inodes``,
``path_keys``). Before any array is allocated the zip directory is checked (members stored, not compressed,
inside the file, not overlapping) and so is each member's ``.npy`` header, so memory never exceeds the file's
size; the header's values are type-checked. :class:`FieldSpec` says what a scorer's rows must look like.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from samespace import content_keys

FORMAT = "samespace-embeddings"
VERSION = 2
READABLE_VERSIONS = (1, 2)
UNIT_NORM_TOLERANCE = 1e-3  # l2_normalise's float32 rows are within 1e-6 of unit length
MAX_HEADER_BYTES = 1 << 16  # a real header is a few hundred bytes
MAX_ROW_DIMS = 8
CHECK_ROWS = 1 << 14  # rows validated at a time, so the checks' temporaries stay small
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

    def read(self, name: str, dtype: str | np.dtype, ndim: int | None = 1) -> np.ndarray:
        """Member ``name`` as an array of exactly ``dtype`` (and ``ndim`` dimensions when given)."""
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


def one_line(text: str) -> str:
    """Control characters (e.g. in member names read from the file) escaped, so a message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
