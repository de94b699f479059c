"""The embedding store: per-image embeddings saved between runs, keyed by file content and scorer identity.

A second ``find_duplicates.py`` run over the same photos embeds only the photos it has not seen: a photo is
found by the hash of its bytes (:func:`content_key`), so renamed or moved photos are recognised, and an
edited photo gets a new key. A store belongs to one scorer: its :func:`scorer_fingerprint` (decoder,
preprocessing, every weight, the hash function) is in the header, and a store with another fingerprint is
never used.

Reading every photo's bytes on every run would cost as much I/O as the first run's decoding, so the store
also keeps a stat index: absolute path -> (size, mtime ns, inode, ctime ns, content key). A file whose stat is
unchanged is not read again; any change re-hashes it (as git's index does). The inode and ctime catch a photo
rewritten in place with its size kept and its mtime set back (``os.utime`` cannot set the ctime).

File format: an uncompressed ``.npz`` (numpy's zip of ``.npy`` arrays):

- ``header``: UTF-8 JSON as uint8 ``{"format", "version", "fingerprint", "method", "fields": {name: [dtype,
  row shape]}, "rows"}``;
- ``keys``: ``S32`` content keys, one per row; ``field_<name>``: one array per embedding field (same row order);
- the stat index: ``paths`` (UTF-8 bytes, concatenated) with ``path_ends`` (int64), ``sizes``, ``mtimes``,
  ``ctimes`` (int64), ``inodes`` (uint64) and ``path_keys`` (``S32``).

Version 1 had no ``inodes`` / ``ctimes``: its rows are used, and its stat entries still list its photos
(``--embeddings``), but they never spare a hash: each photo is re-hashed once, and the next save writes version 2.

The file is untrusted input. Before any array is allocated the zip directory is checked (members stored, not
compressed, inside the file, not overlapping) and so is each member's ``.npy`` header (dtype, shape, and that the
shape fills the member exactly), so memory never exceeds the file's size; then the header, identity, shapes,
keys, values (finite, in range, unit-length where the scorer says so; :class:`FieldSpec`) and the stat index.
Anything wrong is one :class:`StoreError` line naming the file; a damaged or foreign store is ignored with one
warning and rebuilt. Writes are atomic (``outputs.atomic_write``) and made under a file lock in the store's folder,
merging in what another run wrote meanwhile (:meth:`EmbeddingStore.save`).
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import io
import json
import math
import os
import re
import stat
import struct
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, NamedTuple

import filelock
import numpy as np
from numpy.lib import format as npy_format

from samespace import decoding, hashing, outputs

FORMAT = "samespace-embeddings"
VERSION = 2
READABLE_VERSIONS = (1, 2)
KEY_BYTES = 16  # blake2b digest size: 32 hex characters
KEY_DTYPE = f"S{2 * KEY_BYTES}"
UNIT_NORM_TOLERANCE = 1e-3  # l2_normalise's float32 rows are within 1e-6 of unit length
UNKNOWN_INODE = 2**64 - 1  # a stat entry that never matches a file (from a version 1 store): it is re-hashed
LOCK_NAME = ".samespace-embeddings.lock"  # one per folder: embed.py's part files leave no lock files behind
LOCK_TIMEOUT_S = 600.0  # another run writing a store of millions of rows holds the lock for a while
_READ_CHUNK = 1 << 20
_MAX_HEADER_BYTES = 1 << 16  # a real header is a few hundred bytes
_MAX_ROW_DIMS = 8
_CHECK_ROWS = 1 << 14  # rows validated at a time, so the checks' temporaries stay small
_HEADER_KEYS = {"format", "version", "fingerprint", "method", "rows", "fields"}
_STAT_V1 = {"paths": "uint8", "path_ends": "int64", "sizes": "int64", "mtimes": "int64", "path_keys": KEY_DTYPE}
_STAT_V2 = {**_STAT_V1, "inodes": "uint64", "ctimes": "int64"}
# What zipfile and numpy's .npy header reader raise on malformed input (e.g. NotImplementedError: "zip file
# version 6.3"; OSError: a seek before the start).
_MALFORMED = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error, OverflowError,
              NotImplementedError, OSError)


class StoreError(ValueError):
    """A store file that cannot be used: one line naming the file, with the reason (also in ``reason``)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


class _UnusableError(Exception):
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
        for start in range(0, len(flat), _CHECK_ROWS):
            block = flat[start : start + _CHECK_ROWS]
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


class StatEntry(NamedTuple):
    """What the stat index knows of one file: its stat when it was hashed, and the content key."""

    size: int
    mtime_ns: int
    key: str
    inode: int = UNKNOWN_INODE
    ctime_ns: int = 0

    def matches(self, st: os.stat_result) -> bool:
        return (self.inode == st.st_ino and self.size == st.st_size and self.mtime_ns == st.st_mtime_ns
                and self.ctime_ns == st.st_ctime_ns)

    def recency(self) -> tuple[int, int]:
        return self.ctime_ns, self.mtime_ns


class NotRegularFileError(OSError):
    """A path that is a FIFO, device, socket or folder where a file is read."""


def _open_regular(path: str | Path) -> tuple[BinaryIO, os.stat_result]:
    """Open a regular file for reading, and its fstat (the very file read). O_NONBLOCK: opening a FIFO does not
    wait for a writer, it is refused. Symbolic links are followed: a store or photo the user names may be one."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def _hash(f: BinaryIO) -> str:
    return hashing.file_digest(f, hashlib.blake2b(digest_size=KEY_BYTES), _READ_CHUNK)


def content_key_of(content: bytes) -> str:
    """The content key of bytes already read: the same digest as :func:`content_key` of a file holding them."""
    return hashlib.blake2b(content, digest_size=KEY_BYTES).hexdigest()


def content_key(path: str | Path) -> str:
    """blake2b-128 of the file's bytes, as 32 hex characters: the identity of a photo, whatever its name.

    Raises OSError when the file cannot be read or is not a regular file (a FIFO would block).
    """
    f, _ = _open_regular(path)
    with f:
        return _hash(f)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or len(key) > 2 * KEY_BYTES or not key.isascii():
        raise ValueError(f"content key {key!r}: expected at most {2 * KEY_BYTES} ASCII characters")


def _brief(value: object) -> str:
    """A value from the file, for a message: one line, at most 40 characters (a string without quotes)."""
    text = _one_line(value if isinstance(value, str) else repr(value))
    return text if len(text) <= 40 else text[:37] + "..."


def _one_line(text: str) -> str:
    """Control characters (e.g. in member names read from the file) escaped, so a message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def default_store_dir() -> Path:
    """The per-user cache folder for stores: ``appdirs.user_cache_dir('samespace')/embeddings``."""
    import appdirs

    return Path(appdirs.user_cache_dir("samespace")) / "embeddings"


def default_store_path(method: str, fingerprint: str) -> Path:
    """``<user cache>/embeddings/<method>-<fingerprint prefix>.npz``: one store per scorer."""
    return default_store_dir() / f"{method}-{fingerprint[:20]}.npz"


# --------------------------------------------------------------------------------------------
# What an embedding depends on
# --------------------------------------------------------------------------------------------


def decode_identity() -> str:
    """The decoder's identity: decoding.decode_image's code, the image size and Pillow's version."""
    from PIL import __version__ as pillow_version

    return _sha(inspect.getsource(decoding.decode_image), inspect.getsource(decoding.to_rgb), str(decoding.IMAGE_SIZE),
                pillow_version)


def preprocessing_identity() -> str:
    """The backbone input preprocessing's identity, from the one place samespace.feature_cache defines it."""
    from samespace import feature_cache  # imported here: it loads torch, which a hash store does not need

    return feature_cache.transform_identity()


def _sha(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _state_digest(module: object) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):  # type: ignore[attr-defined]
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def scorer_fingerprint(scorer: object) -> str:
    """Identity of what ``scorer`` computes per image: the decoder plus its hash function, or its backbone
    (weights + preprocessing), or the whole Siamese network's weights + preprocessing."""
    from samespace import model_scorer, scorers  # imported here: the scorers declare their rows with FieldSpec

    name = type(scorer).__name__
    if isinstance(scorer, scorers.HashScorer):
        import imagehash

        function = hashing.HASH_FUNCTIONS[scorer.name]
        return _sha(name, scorer.name, decode_identity(), inspect.getsource(function),
                    inspect.getsource(hashing.hash_codes), imagehash.__version__)
    if isinstance(scorer, scorers.CosineScorer):
        extractor = scorer.extractor
        weights = extractor.fingerprint() if hasattr(extractor, "fingerprint") else _state_digest(extractor)
        parts = [name, decode_identity(), preprocessing_identity(), weights, inspect.getsource(scorers.l2_normalise)]
        if isinstance(scorer, scorers.VerifiedScorer):  # its keypoints too: the detector, its settings, OpenCV
            import cv2

            from samespace import verification

            parts += [inspect.getsource(verification.local_features), inspect.getsource(verification.unsquashed),
                      inspect.getsource(verification.pack), str(verification.MAX_KEYPOINTS),
                      str(verification.MAX_ASPECT), cv2.__version__]
        return _sha(*parts)
    if isinstance(scorer, model_scorer.ModelScorer):
        return _sha(name, decode_identity(), preprocessing_identity(), _state_digest(scorer.model),
                    inspect.getsource(scorers.l2_normalise))
    raise TypeError(f"no embedding-store fingerprint for {name}")


# --------------------------------------------------------------------------------------------
# Reading an untrusted store file
# --------------------------------------------------------------------------------------------


class _Archive:
    """The ``.npy`` members of a store file, each checked before anything is allocated for it."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._zip = zipfile.ZipFile(f)
        infos = self._zip.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise _UnusableError("duplicate member names")
        total = 0
        for info in infos:
            label = _one_line(repr(info.filename))
            if info.compress_type != zipfile.ZIP_STORED:  # np.savez writes stored members; deflate could be a bomb
                raise _UnusableError(f"member {label} is compressed; stores are written uncompressed")
            if info.flag_bits & 0x1:
                raise _UnusableError(f"member {label} is encrypted")
            if info.file_size != info.compress_size:
                raise _UnusableError(f"member {label}: stored size {info.compress_size:,} and size "
                                     f"{info.file_size:,} differ")
            if info.header_offset < 0 or info.header_offset + info.compress_size > size:
                raise _UnusableError(f"member {label} declares {info.file_size:,} bytes beyond the file's {size:,}")
            total += info.compress_size
        if total > size:
            raise _UnusableError(f"members declare {total:,} bytes in a file of {size:,}")
        if any(not n.endswith(".npy") for n in names):
            others = sorted(n for n in names if not n.endswith(".npy"))
            raise _UnusableError(f"members {_brief(others)} are not arrays")
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
                raise _UnusableError(f"{name}: .npy format version {version}")
            if found != expected or fortran:
                order = "Fortran-ordered " if fortran else ""
                raise _UnusableError(f"{name}: {order}{found} array, expected {expected}")
            if (ndim is not None and len(shape) != ndim) or not 1 <= len(shape) <= 1 + _MAX_ROW_DIMS \
                    or any(d < 0 for d in shape):
                raise _UnusableError(f"{name}: array of shape {_brief(shape)}")
            count = math.prod(shape)
            if f.tell() + count * expected.itemsize != info.file_size:  # before allocating: the shape is a claim
                raise _UnusableError(f"{name}: shape {_brief(shape)} does not fit its {info.file_size:,} bytes")
            out = np.empty(count, expected)
            view = out.view(np.uint8)
            done = 0
            while done < len(view):
                chunk = f.read(min(len(view) - done, 16 * _READ_CHUNK))
                if not chunk:
                    raise _UnusableError(f"{name}: truncated")
                view[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
                done += len(chunk)
            f.read(1)  # at the end: zipfile checks the CRC (a flipped bit anywhere in the member)
        return out.reshape(shape)


@dataclass(frozen=True)
class _Header:
    version: int
    fingerprint: str
    method: str
    rows: int
    fields: dict[str, tuple[str, tuple[int, ...] | None]]


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool


def _parse_header(raw: bytes) -> _Header:
    """The JSON header as a typed structure: every key present, of its type, and nothing else."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _UnusableError(f"unreadable header ({type(exc).__name__})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else doc
        raise _UnusableError(f"not a {FORMAT} store (format {_brief(found)})")
    version = doc.get("version")
    if not _is_int(version) or version not in READABLE_VERSIONS:
        raise _UnusableError(f"{FORMAT} version {_brief(version)}; this SameSpace reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
    if set(doc) != _HEADER_KEYS:
        missing, extra = sorted(_HEADER_KEYS - set(doc)), sorted(set(doc) - _HEADER_KEYS)
        raise _UnusableError(f"header keys: missing {_brief(missing)}, unexpected {_brief(extra)}")
    fingerprint, method, rows, fields = doc["fingerprint"], doc["method"], doc["rows"], doc["fields"]
    for key, value in (("fingerprint", fingerprint), ("method", method)):
        if not isinstance(value, str):
            raise _UnusableError(f"header: {key} {_brief(value)} is not a string")
    if not _is_int(rows) or rows < 0:
        raise _UnusableError(f"header: rows {_brief(rows)} is not a count")
    if not isinstance(fields, dict):
        raise _UnusableError(f"header: fields {_brief(fields)} is not an object of name: [dtype, row shape]")
    specs: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for name, spec in fields.items():
        valid = isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and (
            (spec[1] is None and rows == 0)
            or (isinstance(spec[1], list) and len(spec[1]) <= _MAX_ROW_DIMS
                and all(_is_int(d) and d >= 0 for d in spec[1])))
        if not valid:
            raise _UnusableError(f"header: field {_brief(name)}: {_brief(spec)} is not [dtype, row shape]")
        specs[name] = (spec[0], None if spec[1] is None else tuple(spec[1]))
    return _Header(version, fingerprint, method, rows, specs)


def _signature(st: os.stat_result) -> tuple[int, ...]:
    """Which version of a file: atomic_write makes a new inode, and any write moves the ctime."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class EmbeddingStore:
    """Embeddings of one scorer, one row per distinct photo content, plus the stat index.

    ``fields`` maps a field name to its :class:`FieldSpec` (the scorer's ``fields``) or a plain dtype name
    (e.g. ``{"vectors": "float32"}``); row shapes the specs leave open are fixed by the first rows added or read.
    ``path``: the file, for messages (set by :meth:`load`, :func:`open_store` and :meth:`save`).
    """

    def __init__(self, fingerprint: str, method: str, fields: Mapping[str, str | FieldSpec],
                 path: str | Path | None = None) -> None:
        self.fingerprint = fingerprint
        self.method = method
        self.specs = {name: FieldSpec.of(spec) for name, spec in fields.items()}
        self.dtypes = {name: np.dtype(spec.dtype) for name, spec in self.specs.items()}
        self.path = Path(path) if path is not None else None
        self._shapes: dict[str, tuple[int, ...] | None] = {n: s.shape and tuple(s.shape) for n, s in self.specs.items()}
        self._row: dict[str, int] = {}
        self._arrays: dict[str, np.ndarray] | None = None
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in fields}
        self._stats: dict[str, StatEntry] = {}
        self._seen: tuple[str, tuple[int, ...]] | None = None  # (file, _signature) whose content this store holds
        self.changed = False

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "embedding store"

    # rows ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, key: str) -> bool:
        return key in self._row

    def keys(self) -> list[str]:
        """Content keys in row order."""
        return sorted(self._row, key=self._row.__getitem__)

    def add(self, keys: Sequence[str], fields: dict[str, np.ndarray]) -> None:
        """Add rows (keys already present are ignored: the same content has the same embedding).

        Rows the store could not read back (another row shape than the store's or the scorer's, non-finite,
        out of range, not unit length) are a StoreError naming the store, and nothing is added.
        """
        if set(fields) != set(self.specs):
            raise ValueError(f"fields {sorted(fields)} != store fields {sorted(self.specs)}")
        seen: set[str] = set()
        new = []
        for k, key in enumerate(keys):
            if key not in self._row and key not in seen:
                _check_key(key)
                seen.add(key)
                new.append(k)
        if not new:
            return
        prepared = {}
        for name, array in fields.items():
            array = np.asarray(array)
            if len(array) != len(keys):
                raise ValueError(f"field {name}: {len(array)} rows for {len(keys)} keys")
            rows = np.ascontiguousarray(array[new], dtype=self.dtypes[name])
            shape = self._shapes[name]
            if shape is not None and rows.shape[1:] != shape:
                raise StoreError(f"{self._where()}: new rows of field {name} have shape {rows.shape[1:]}, the "
                                 f"store's rows {shape}")
            problem = self.specs[name].problem(name, rows)
            if problem:
                raise StoreError(f"{self._where()}: cannot add rows: {problem}")
            prepared[name] = rows
        for name, rows in prepared.items():
            self._chunks[name].append(rows)
            self._shapes[name] = rows.shape[1:]
        for k in new:
            self._row[keys[k]] = len(self._row)
        self.changed = True

    def _consolidate(self) -> dict[str, np.ndarray]:
        if self._arrays is None or any(self._chunks.values()):
            arrays = {}
            for name, chunks in self._chunks.items():
                parts = ([self._arrays[name]] if self._arrays is not None else []) + chunks
                arrays[name] = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else None
                self._chunks[name] = []
            self._arrays = arrays  # type: ignore[assignment]
        return self._arrays  # type: ignore[return-value]

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The rows of ``keys`` (all present), each field an array in the order of ``keys``."""
        rows = np.fromiter((self._row[k] for k in keys), dtype=np.int64, count=len(keys))
        if not self._row:  # no arrays yet
            return {name: np.zeros((0, *(self._shapes[name] or ())), dtype) for name, dtype in self.dtypes.items()}
        return {name: array[rows] for name, array in self._consolidate().items()}

    # stat index ---------------------------------------------------------------------------

    def key_for(self, path: str | Path) -> str:
        """The content key of a file: from the stat index when its stat is unchanged, else hashed.

        Raises OSError when the file cannot be read or is not a regular file.
        """
        absolute = os.path.abspath(path)
        known = self._stats.get(absolute)
        if known is not None and known.matches(os.stat(absolute)):
            return known.key
        f, st = _open_regular(absolute)
        with f:
            key = _hash(f)
        self.remember(absolute, st, key)  # the stat of the file read, taken before reading it
        return key

    def remember(self, path: str | Path, st: os.stat_result, key: str) -> None:
        """Record that the file at ``path``, as ``st`` describes it, holds content ``key``.

        ``st`` must be taken before the bytes were read (e.g. fstat of the open file): if the file changes while
        it is read, its stat changes too and the entry no longer matches.
        """
        _check_key(key)
        entry = StatEntry(st.st_size, st.st_mtime_ns, key, st.st_ino, st.st_ctime_ns)
        absolute = os.path.abspath(path)
        if self._stats.get(absolute) != entry:
            self._stats[absolute] = entry
            self.changed = True

    def stat_entry(self, path: str | Path) -> StatEntry | None:
        """The stat-index entry of a file, or None."""
        return self._stats.get(os.path.abspath(path))

    def record(self, path: str | Path, size: int, mtime_ns: int, key: str, inode: int = UNKNOWN_INODE,
               ctime_ns: int = 0) -> None:
        """Add a stat-index entry (when merging stores; ``record(path, *stat_entry(other_path))``)."""
        _check_key(key)
        self._stats[os.path.abspath(path)] = StatEntry(int(size), int(mtime_ns), key, int(inode), int(ctime_ns))
        self.changed = True

    def stat_entries(self) -> dict[str, StatEntry]:
        """absolute path -> its stat-index entry."""
        return dict(self._stats)

    def listed_paths(self) -> list[str]:
        """Every path of the stat index whose content has a row, sorted."""
        return sorted(p for p, entry in self._stats.items() if entry.key in self._row)

    def merge(self, other: EmbeddingStore) -> None:
        """Add another store's rows and stat entries (same fingerprint); for a path both know, the entry of the
        later version of the file (ctime, then mtime) is kept. Rows of another shape: StoreError, nothing added."""
        if other.fingerprint != self.fingerprint:
            raise StoreError("cannot merge stores of different scorers")
        keys = other.keys()
        if keys:
            self.add(keys, other.get(keys))
        for path, entry in other.stat_entries().items():
            mine = self._stats.get(path)
            if mine is None or (mine != entry and entry.recency() >= mine.recency()):
                self.record(path, *entry)

    # file ---------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The store file's content, rows sorted by key and paths sorted (same content -> same bytes)."""
        keys = sorted(self._row)
        arrays = self.get(keys) if keys else {}
        paths = sorted(self._stats)
        entries = [self._stats[p] for p in paths]
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        header = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "method": self.method,
            "rows": len(keys),
            "fields": {name: [self.dtypes[name].str, None if shape is None else list(shape)]
                       for name, shape in self._shapes.items()},
        }
        out = {
            "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8),
            "keys": np.array(keys, dtype=KEY_DTYPE).reshape(-1),
            "paths": np.frombuffer(b"".join(encoded), np.uint8),
            "path_ends": np.cumsum([len(e) for e in encoded], dtype=np.int64),
            "sizes": np.array([e.size for e in entries], np.int64),
            "mtimes": np.array([e.mtime_ns for e in entries], np.int64),
            "inodes": np.array([e.inode for e in entries], np.uint64),
            "ctimes": np.array([e.ctime_ns for e in entries], np.int64),
            "path_keys": np.array([e.key for e in entries], dtype=KEY_DTYPE).reshape(-1),
        }
        for name, dtype in self.dtypes.items():
            out[f"field_{name}"] = arrays[name] if keys else np.zeros((0, *(self._shapes[name] or ())), dtype)
        buffer = io.BytesIO()
        np.savez(buffer, **out)
        return buffer.getvalue()

    def save(self, path: str | Path) -> None:
        """Write the store atomically (a temporary file renamed over ``path``); creates the folder.

        Under a file lock beside the store (:data:`LOCK_NAME`, one for the stores of a folder), so runs sharing a
        store write one at a time: temporary files of the store left by a killed run are removed (every writer
        holds the lock while its temporary file exists, so any found are stale), and when the file changed since
        this store read it, its rows and stat entries are merged in first, so concurrent runs keep each other's
        rows. Raises OSError when the store cannot be written (filelock.Timeout after LOCK_TIMEOUT_S is one).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(path.with_name(LOCK_NAME), timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except NotImplementedError as exc:  # old filelock on a file system without flock
            raise OSError(f"{lock.lock_file}: cannot lock ({exc})") from exc
        try:
            _remove_stale_temporaries(path)
            self._merge_from(path)
            outputs.atomic_write(path, self.to_bytes())
            self._seen = (os.path.abspath(path), _signature(os.stat(path)))
        finally:
            lock.release()
        self.path = self.path or path
        self.changed = False

    def _merge_from(self, path: Path) -> None:
        """Merge the store file at ``path`` when it is not the version this store holds (under the lock)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        if self._seen == (os.path.abspath(path), _signature(st)):
            return
        specs = {name: replace(spec, shape=self._shapes[name]) for name, spec in self.specs.items()}
        try:
            self.merge(EmbeddingStore.load(path, self.fingerprint, self.method, specs))
        except StoreError as exc:
            warnings.warn(f"{path}: the embedding store on disk cannot be merged ({_one_line(exc.reason)}); "
                          "replacing it", stacklevel=3)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str, method: str,
             fields: Mapping[str, str | FieldSpec]) -> EmbeddingStore:
        """Read and validate a store file; anything that makes it unusable is a StoreError naming it."""
        path = Path(path)
        try:
            f, st = _open_regular(path)
        except OSError as exc:
            reason = "not a regular file" if isinstance(exc, NotRegularFileError) else \
                f"cannot open it ({type(exc).__name__}: {exc.strerror or exc})"
            raise StoreError(f"{path}: unusable embedding store ({reason})", reason) from exc
        try:
            with f:
                store = cls(fingerprint, method, fields, path)
                store._read(f, st.st_size)
        except _UnusableError as exc:
            reason = _one_line(str(exc))
            raise StoreError(f"{path}: unusable embedding store ({reason})", reason) from None
        except _MALFORMED as exc:
            reason = _one_line(f"damaged: {type(exc).__name__}" + (f": {exc}" if str(exc) else ""))
            raise StoreError(f"{path}: unusable embedding store ({reason})", reason) from exc
        store._seen = (os.path.abspath(path), _signature(st))
        return store

    def _read(self, f: BinaryIO, size: int) -> None:
        archive = _Archive(f, size)
        if "header" not in archive.members:
            raise _UnusableError(f"not a {FORMAT} store (no header)")
        if archive.members["header"].file_size > _MAX_HEADER_BYTES:
            raise _UnusableError(f"header of {archive.members['header'].file_size:,} bytes")
        header = _parse_header(archive.read("header", np.uint8).tobytes())
        # the identity before the member names: a store of another method has other fields
        if header.fingerprint != self.fingerprint or header.method != self.method:
            raise _UnusableError(f"made by another scorer: {_brief(header.method)}, fingerprint "
                                 f"{_brief(header.fingerprint[:12])}...; this run: {self.method}, "
                                 f"{self.fingerprint[:12]}...")
        if set(header.fields) != set(self.specs):
            raise _UnusableError(f"fields {_brief(sorted(header.fields))} differ from the scorer's "
                                 f"{sorted(self.specs)}")
        for name, spec in self.specs.items():
            dtype, shape = header.fields[name]
            if dtype != self.dtypes[name].str:
                raise _UnusableError(f"field {name}: dtype {_brief(dtype)}, expected {self.dtypes[name].str}")
            if shape is not None and spec.shape is not None and shape != tuple(spec.shape):
                raise _UnusableError(f"field {name}: rows of shape {shape}, this scorer makes {tuple(spec.shape)}")
        stat_members = _STAT_V2 if header.version == 2 else _STAT_V1
        expected = {"header", "keys", *stat_members, *(f"field_{name}" for name in self.specs)}
        if set(archive.members) != expected:
            missing, extra = sorted(expected - set(archive.members)), sorted(set(archive.members) - expected)
            raise _UnusableError(f"arrays: missing {_brief(missing)}, unexpected {_brief(extra)}")
        rows = header.rows
        keys = archive.read("keys", KEY_DTYPE)
        if len(keys) != rows:
            raise _UnusableError(f"{len(keys)} keys for {rows} rows in the header")
        arrays = {}
        for name, spec in self.specs.items():
            array = archive.read(f"field_{name}", self.dtypes[name], ndim=None)
            if len(array) != rows or (rows and array.shape[1:] != header.fields[name][1]):
                raise _UnusableError(f"field {name}: array of shape {array.shape}, the header says {rows} rows of "
                                     f"shape {header.fields[name][1]}")
            problem = spec.problem(name, array)
            if problem:
                raise _UnusableError(problem)
            arrays[name] = array
            if rows:
                self._shapes[name] = array.shape[1:]
        if len(np.unique(keys)) != len(keys):
            raise _UnusableError("duplicate keys")
        try:
            self._row = {k.decode("ascii"): i for i, k in enumerate(keys.tolist())}
        except UnicodeDecodeError as exc:
            raise _UnusableError("keys that are not ASCII") from exc
        self._read_stat_index(archive, stat_members)
        self._arrays = arrays if rows else None
        self.changed = False  # an older version is rewritten in this one by its next save, not just for that

    def _read_stat_index(self, archive: _Archive, members: dict[str, str]) -> None:
        index = {name: archive.read(name, dtype) for name, dtype in members.items()}
        blob, ends = index["paths"], index["path_ends"]
        m = len(ends)
        if (any(len(index[name]) != m for name in members if name != "paths")
                or (m and (ends[-1] != len(blob) or ends[0] < 0 or np.any(np.diff(ends) < 0)))
                or (not m and len(blob))):
            raise _UnusableError("the stat index is inconsistent")
        inodes = index["inodes"].tolist() if "inodes" in index else [UNKNOWN_INODE] * m
        ctimes = index["ctimes"].tolist() if "ctimes" in index else [0] * m
        raw = blob.tobytes()
        starts = [0, *ends[:-1].tolist()] if m else []
        try:
            for s, e, size, mtime, key, inode, ctime in zip(starts, ends.tolist(), index["sizes"].tolist(),
                                                            index["mtimes"].tolist(), index["path_keys"].tolist(),
                                                            inodes, ctimes, strict=True):
                self._stats[raw[s:e].decode("utf-8", "surrogateescape")] = StatEntry(
                    size, mtime, key.decode("ascii"), inode, ctime)
        except UnicodeDecodeError as exc:
            raise _UnusableError("stat index keys that are not ASCII") from exc


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.<8 characters>.tmp`` files beside the store: outputs.atomic_write's temporary files of it,
    left by a killed run (the caller holds the store's lock, so no other writer has one open)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    with os.scandir(path.parent) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass


def open_store(path: str | Path, fingerprint: str, method: str, fields: Mapping[str, str | FieldSpec],
               strict: bool = False) -> EmbeddingStore:
    """The store at ``path``, or an empty one when there is none.

    A damaged or foreign file is ignored with one warning (it is replaced on the next save); with ``strict``
    (a store the user named as input) it is a StoreError instead.
    """
    path = Path(path)
    if not path.exists():
        if strict:
            raise StoreError(f"{path}: no such embedding store")
        return EmbeddingStore(fingerprint, method, fields, path)
    try:
        return EmbeddingStore.load(path, fingerprint, method, fields)
    except StoreError as exc:
        if strict:
            raise
        warnings.warn(f"{path}: ignoring the embedding store ({exc.reason}); it will be rebuilt", stacklevel=2)
        store = EmbeddingStore(fingerprint, method, fields, path)
        try:  # the unusable file is what the next save replaces, not a store to merge
            store._seen = (os.path.abspath(path), _signature(os.stat(path)))
        except OSError:
            pass
        store.changed = True
        return store


def merge_files(paths: Iterable[str | Path], fingerprint: str, method: str,
                fields: Mapping[str, str | FieldSpec]) -> EmbeddingStore:
    """One store holding the rows and stat entries of every (valid) store file in ``paths`` (strict)."""
    merged = EmbeddingStore(fingerprint, method, fields)
    for path in paths:
        merged.merge(open_store(path, fingerprint, method, fields, strict=True))
    return merged
