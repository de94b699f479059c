"""The embedding store: per-image embeddings saved between runs, keyed by file content and scorer identity.

A second run over the same photos embeds only those it has not seen: a photo is found by the hash of its bytes, so
renamed or moved photos are recognised and an edited photo gets a new key. A store belongs to one scorer (its
fingerprint: decoder, preprocessing, every weight, the hash function; another's store is never used). A stat index
(absolute path -> size, mtime ns, inode, ctime ns, content key) spares re-reading files whose stat is unchanged, as
git's index does; the inode and ctime catch a photo rewritten in place with its size kept and its mtime set back.

File format and its validation as untrusted input: store_format.py (large fields are memory-mapped once checked, so
a store of millions of rows is not held in memory). Version 1 had no ``inodes`` / ``ctimes``: its rows are used but
its stat entries spare no hash, and the next save writes version 2. Anything wrong is one :class:`StoreError` line
naming the file; a damaged or foreign store is ignored with one warning and rebuilt. Writes are atomic
(``outputs.atomic_write``), streamed a few thousand rows at a time, and made under a file lock in the store's
folder, merging in what another run wrote meanwhile (:meth:`EmbeddingStore.save`).

Layout: the store the user names (``store.npz``, the *base*) plus *segments* beside it, ``store.npz.seg-<16 hex>``,
each a file of the same format holding only the rows and stat entries one save added. Rewriting a store of
millions of rows to add a hundred would cost a run more than embedding them, so a save normally writes one new
segment (a fresh random name per save: concurrent runs never overwrite each other's). A save *compacts* instead
(everything into a new base, then the segments it folded in are deleted) when there is no usable base, the base is
an older version or changed on disk since this run read it, or the segments would exceed
:data:`COMPACT_SEGMENTS` files or :data:`COMPACT_SHARE` of the base's bytes. A read takes the base, then every
segment in name order, each validated as a whole store (a segment is untrusted input too): with ``strict`` a bad
segment is a StoreError naming it, else it is ignored with one warning and the next save compacts it away. A
store written before segments existed is a base without segments and reads as before.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import filelock
import numpy as np

from samespace import content_keys, interrupts, outputs, store_format
from samespace.store_rows import RowBlocks

LOCK_NAME = ".samespace-embeddings.lock"  # one per folder: embed.py's part files leave no lock files behind
LOCK_TIMEOUT_S = 600.0  # another run writing a store of millions of rows holds the lock for a while
COMPACT_SEGMENTS = 32  # more segment files than this: each read opens them all, so fold them into the base
COMPACT_SHARE = 0.25  # segments above this share of the base's bytes: compaction costs < 5x the appended bytes
LOAD_RETRIES = 3  # a segment vanishing while read: another run compacted it into the base meanwhile


def default_store_dir() -> Path:
    """The per-user cache folder for stores: ``appdirs.user_cache_dir('samespace')/embeddings``."""
    import appdirs

    return Path(appdirs.user_cache_dir("samespace")) / "embeddings"


def default_store_path(method: str, fingerprint: str) -> Path:
    """``<user cache>/embeddings/<method>-<fingerprint prefix>.npz``: one store per scorer."""
    return default_store_dir() / f"{method}-{fingerprint[:20]}.npz"


class EmbeddingStore:
    """Embeddings of one scorer, one row per distinct photo content, plus the stat index.

    ``fields`` maps a field name to its :class:`FieldSpec` (the scorer's ``fields``) or a plain dtype name
    (e.g. ``{"vectors": "float32"}``); row shapes the specs leave open are fixed by the first rows added or read.
    ``path``: the file, for messages (set by :meth:`load`, :func:`open_store` and :meth:`save`).
    """

    def __init__(self, fingerprint: str, method: str, fields: Mapping[str, str | store_format.FieldSpec],
                 path: str | Path | None = None) -> None:
        self.fingerprint = fingerprint
        self.method = method
        self.specs = {name: store_format.FieldSpec.of(spec) for name, spec in fields.items()}
        self.dtypes = {name: np.dtype(spec.dtype) for name, spec in self.specs.items()}
        self.path = Path(path) if path is not None else None
        self.save_to: Path | None = None  # where the run that opened it saves it (finder saves early there)
        self.saved = False  # whether save() wrote it (kept by reload)
        self._shapes: dict[str, tuple[int, ...] | None] = {n: s.shape and tuple(s.shape) for n, s in self.specs.items()}
        self._row: dict[str, int] = {}  # content key -> its row in _data
        self._data = RowBlocks()
        self._stats: dict[str, content_keys.StatEntry] = {}
        self._seen: tuple[str, tuple[int, ...]] | None = None  # (file, stat_signature) whose content this store holds
        self._segments: dict[str, tuple[int, ...]] = {}  # segment file -> stat_signature held (or refused) here
        self._base_version = store_format.VERSION
        self._rebuild = False  # the base on disk is unusable or a segment was refused: the next save compacts
        self._fresh_keys: list[str] = []  # rows and stat entries added since read or written: the next segment
        self._fresh_paths: set[str] = set()
        self.changed = False

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "embedding store"

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, key: str) -> bool:
        return key in self._row

    def reload(self, path: Path) -> None:
        """Become the store as read afresh from ``path``: after a save there, its large fields memory-mapped."""
        specs = {name: replace(spec, shape=self._shapes[name]) for name, spec in self.specs.items()}
        save_to, saved = self.save_to, self.saved
        self.__dict__.update(read_store(Path(path), self.fingerprint, self.method, specs, strict=False).__dict__)
        self.save_to, self.saved = save_to, saved

    def row_bytes(self) -> int:
        """Bytes one row takes in memory."""
        return sum(d.itemsize * int(np.prod(self._shapes[n] or ())) for n, d in self.dtypes.items())

    def rows_in_memory(self) -> int:
        """Rows held in memory: those added, and those of files too small to be memory-mapped."""
        return self._data.in_memory()

    def keys(self) -> list[str]:
        """Content keys in row order."""
        return sorted(self._row, key=self._row.__getitem__)

    def add(self, keys: Sequence[str], fields: dict[str, np.ndarray]) -> None:
        """Add rows (keys already present are ignored: the same content has the same embedding). Rows the store
        could not read back (another row shape, non-finite, out of range, not unit length) are a StoreError naming
        the store, and nothing is added."""
        if set(fields) != set(self.specs):
            raise ValueError(f"fields {sorted(fields)} != store fields {sorted(self.specs)}")
        seen: set[str] = set()
        new = []
        for k, key in enumerate(keys):
            if key not in self._row and key not in seen:
                content_keys.check_key(key)
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
                raise store_format.StoreError(
                    f"{self._where()}: new rows of field {name} have shape {rows.shape[1:]}, the store's rows {shape}"
                )
            problem = self.specs[name].problem(name, rows)
            if problem:
                raise store_format.StoreError(f"{self._where()}: cannot add rows: {problem}")
            prepared[name] = rows
        with interrupts.deferred_interrupts():  # all the rows or none: a store saved on Ctrl-C stays whole
            self._shapes.update((name, rows.shape[1:]) for name, rows in prepared.items())
            start = self._data.append(prepared)
            for i, k in enumerate(new):
                self._row[keys[k]] = start + i
                self._fresh_keys.append(keys[k])
            self.changed = True

    def get_field(self, name: str, keys: Sequence[str]) -> np.ndarray:
        """The rows of field ``name`` of ``keys`` (all present), in the order of ``keys``."""
        rows = np.fromiter((self._row[k] for k in keys), dtype=np.int64, count=len(keys))
        if not len(rows):
            return np.zeros((0, *(self._shapes[name] or ())), self.dtypes[name])
        return self._data.take(name, rows, self.dtypes[name], self._shapes[name] or ())

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The rows of ``keys`` (all present), each field an array in the order of ``keys``."""
        return {name: self.get_field(name, keys) for name in self.dtypes}

    # stat index ---------------------------------------------------------------------------

    def key_for(self, path: str | Path) -> str:
        """The content key of a file: from the stat index when its stat is unchanged, else hashed. Raises OSError
        when the file cannot be read or is not a regular file."""
        absolute = os.path.abspath(path)
        known = self._stats.get(absolute)
        if known is not None and known.matches(os.stat(absolute)):
            return known.key
        f, st = content_keys.open_regular(absolute)
        with f:
            key = content_keys.hash_file(f)
        self.remember(absolute, st, key)  # the stat of the file read, taken before reading it
        return key

    def remember(self, path: str | Path, st: os.stat_result, key: str) -> None:
        """Record that the file at ``path``, as ``st`` describes it, holds content ``key``. ``st`` must be taken
        before the bytes were read (fstat of the open file): if the file changes meanwhile, the entry no longer
        matches."""
        content_keys.check_key(key)
        entry = content_keys.StatEntry(st.st_size, st.st_mtime_ns, key, st.st_ino, st.st_ctime_ns)
        absolute = os.path.abspath(path)
        if self._stats.get(absolute) != entry:
            self._stats[absolute] = entry
            self._fresh_paths.add(absolute)
            self.changed = True

    def stat_entry(self, path: str | Path) -> content_keys.StatEntry | None:
        """The stat-index entry of a file, or None."""
        return self._stats.get(os.path.abspath(path))

    def record(self, path: str | Path, size: int, mtime_ns: int, key: str, inode: int = content_keys.UNKNOWN_INODE,
               ctime_ns: int = 0) -> None:
        """Add a stat-index entry (when merging stores; ``record(path, *stat_entry(other_path))``)."""
        content_keys.check_key(key)
        absolute = os.path.abspath(path)
        self._stats[absolute] = content_keys.StatEntry(int(size), int(mtime_ns), key, int(inode), int(ctime_ns))
        self._fresh_paths.add(absolute)
        self.changed = True

    def stat_entries(self) -> dict[str, content_keys.StatEntry]:
        """absolute path -> its stat-index entry."""
        return dict(self._stats)

    def listed_paths(self) -> list[str]:
        """Every path of the stat index whose content has a row, sorted."""
        return sorted(p for p, entry in self._stats.items() if entry.key in self._row)

    def merge(self, other: EmbeddingStore) -> None:
        """Add another store's rows and stat entries (same fingerprint); for a path both know, the entry of the
        later version of the file (ctime, then mtime) is kept. Rows of another shape: StoreError, nothing added.
        Memory-mapped rows stay mapped (its rows already here are left unused in them)."""
        if other.fingerprint != self.fingerprint:
            raise store_format.StoreError("cannot merge stores of different scorers")
        keys = [key for key in other.keys() if key not in self._row]
        if keys and other.rows_in_memory() == 0:  # memory-mapped: adopt its blocks rather than copy them
            for name, shape in other._shapes.items():
                if self._shapes[name] is not None and shape is not None and shape != self._shapes[name]:
                    raise store_format.StoreError(f"{self._where()}: new rows of field {name} have shape {shape}, "
                                                  f"the store's rows {self._shapes[name]}")
            first = len(self._data)
            for block in other._data.blocks():
                self._data.adopt(block)
            self._shapes.update({name: shape for name, shape in other._shapes.items() if shape is not None})
            for key in keys:
                self._row[key] = first + other._row[key]
                self._fresh_keys.append(key)
            self.changed = True
        elif keys:
            self.add(keys, other.get(keys))
        for path, entry in other.stat_entries().items():
            mine = self._stats.get(path)
            if mine is None or (mine != entry and entry.recency() >= mine.recency()):
                self.record(path, *entry)

    # file ---------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The store file's content, rows sorted by key and paths sorted (same content -> same bytes)."""
        return self._encode(sorted(self._row), sorted(self._stats))

    def _encode(self, keys: list[str], paths: list[str]) -> bytes:
        """A store file of the rows of ``keys`` and the stat entries of ``paths`` (a base or a segment)."""
        buffer = io.BytesIO()
        self._write(buffer, keys, paths)
        return buffer.getvalue()

    def _write(self, f: BinaryIO, keys: list[str], paths: list[str]) -> None:
        """Write that file into ``f``, the rows a few thousand at a time (store_format.write)."""
        contents = store_format.Contents(store_format.VERSION, {k: i for i, k in enumerate(keys)}, None,
                                         dict(self._shapes), {p: self._stats[p] for p in paths})
        store_format.write(f, contents, self.fingerprint, self.method, self.dtypes, self.get_field)

    def save(self, path: str | Path, compact: bool = False) -> None:
        """Write what this run added as a new segment beside ``path``, or compact the store into ``path`` (when
        needed, or asked: ``compact``). Atomic (creates the folder) and under a file lock beside the store
        (:data:`LOCK_NAME`), so runs sharing a store write one at a time; temporary files a killed run left are
        removed. A compaction first merges the base and every segment written since this store read them, so
        concurrent runs keep each other's rows. Raises OSError when the store cannot be written (filelock.Timeout
        after LOCK_TIMEOUT_S is one).
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
            if compact or not self._append(path):
                self._compact(path)
        finally:
            lock.release()
        self.path = self.path or path
        self.changed, self.saved = False, True

    def _append(self, path: Path) -> bool:
        """Write this run's new rows and stat entries as a new segment (under the lock); False when the store must
        be compacted instead (no usable base of this version as read, or too many or too large segments)."""
        if self._rebuild or self._base_version != store_format.VERSION or self._seen is None:
            return False
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        if self._seen != (os.path.abspath(path), content_keys.stat_signature(st)):
            return False  # replaced or compacted meanwhile: merge it (the old behaviour) rather than guess
        segments = store_format.segment_paths(path)
        if len(segments) >= COMPACT_SEGMENTS:
            return False
        if not self._fresh_keys and not self._fresh_paths:
            return True
        content = self._encode(sorted(self._fresh_keys), sorted(self._fresh_paths))
        on_disk = 0
        for segment in segments:
            try:
                on_disk += os.lstat(segment).st_size
            except FileNotFoundError:
                pass
        if on_disk + len(content) > COMPACT_SHARE * st.st_size:
            return False
        segment = path.with_name(f"{path.name}{store_format.SEGMENT_INFIX}{secrets.token_hex(8)}")
        outputs.atomic_write(segment, content)
        self._segments[os.path.abspath(segment)] = content_keys.stat_signature(os.stat(segment))
        self._clear_fresh()
        return True

    def _compact(self, path: Path) -> None:
        """Merge what is on disk and this store lacks, write it all as the new base, then delete the segments folded
        in (under the lock; killed between the two, a read ignores the rows it already has)."""
        self._merge_from(path)
        segments = store_format.segment_paths(path)
        for segment in segments:
            self._merge_segment(segment, strict=False, replacing=True)
        outputs.atomic_write(path, lambda f: self._write(f, sorted(self._row), sorted(self._stats)))
        self._seen = (os.path.abspath(path), content_keys.stat_signature(os.stat(path)))
        for segment in segments:
            try:
                os.unlink(segment)
            except FileNotFoundError:
                pass
            except OSError as exc:  # e.g. a folder named like a segment: refused on every read, never ours
                warnings.warn(f"{segment}: cannot remove this segment of the embedding store ({exc})", stacklevel=4)
        self._segments = {}
        self._base_version = store_format.VERSION
        self._rebuild = False
        self._clear_fresh()

    def _clear_fresh(self) -> None:
        self._fresh_keys = []
        self._fresh_paths = set()

    def _merge_segment(self, segment: Path, strict: bool, replacing: bool = False) -> None:
        """Merge one segment file unless this store holds (or refused) that version of it. Unusable: a StoreError
        with ``strict``, else one warning and a compaction at the next save. Vanished: SegmentVanishedError."""
        absolute = os.path.abspath(segment)
        try:
            signature = content_keys.stat_signature(os.lstat(segment))
        except FileNotFoundError as exc:
            raise SegmentVanishedError(str(segment)) from exc
        if self._segments.get(absolute) == signature:
            return
        specs = {name: replace(spec, shape=self._shapes[name]) for name, spec in self.specs.items()}
        try:
            part = EmbeddingStore._load_file(segment, self.fingerprint, self.method, specs)
            self.merge(part)
        except store_format.StoreError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise SegmentVanishedError(str(segment)) from exc
            if strict:
                raise
            action = "removing it" if replacing else "the next save removes it"
            warnings.warn(f"{segment}: ignoring this segment of the embedding store "
                          f"({store_format.one_line(exc.reason)}); {action}", stacklevel=4)
            self._rebuild = True
        self._segments[absolute] = signature

    def _merge_from(self, path: Path) -> None:
        """Merge the store file at ``path`` when it is not the version this store holds (under the lock)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        if self._seen == (os.path.abspath(path), content_keys.stat_signature(st)):
            return
        specs = {name: replace(spec, shape=self._shapes[name]) for name, spec in self.specs.items()}
        try:
            self.merge(EmbeddingStore.load(path, self.fingerprint, self.method, specs))
        except store_format.StoreError as exc:
            warnings.warn(f"{path}: the embedding store on disk cannot be merged "
                          f"({store_format.one_line(exc.reason)}); replacing it", stacklevel=3)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str, method: str,
             fields: Mapping[str, str | store_format.FieldSpec]) -> EmbeddingStore:
        """Read and validate a store (its base and segments); anything that makes one of its files unusable is a
        StoreError naming that file."""
        return read_store(Path(path), fingerprint, method, fields, strict=True)

    @classmethod
    def _load_file(cls, path: str | Path, fingerprint: str, method: str,
                   fields: Mapping[str, str | store_format.FieldSpec]) -> EmbeddingStore:
        """Read and validate one store file (a base or a segment); unusable: a StoreError naming it."""
        path = Path(path)
        try:
            f, st = content_keys.open_regular(path)
        except OSError as exc:
            reason = "not a regular file" if isinstance(exc, content_keys.NotRegularFileError) else \
                f"cannot open it ({type(exc).__name__}: {exc.strerror or exc})"
            raise store_format.StoreError(f"{path}: unusable embedding store ({reason})", reason) from exc
        try:
            with f:
                store = cls(fingerprint, method, fields, path)
                store._apply(store_format.read_contents(f, st.st_size, fingerprint, method, store.specs))
        except store_format.UnusableError as exc:
            reason = store_format.one_line(str(exc))
            raise store_format.StoreError(f"{path}: unusable embedding store ({reason})", reason) from None
        except store_format.MALFORMED as exc:
            reason = store_format.one_line(f"damaged: {type(exc).__name__}" + (f": {exc}" if str(exc) else ""))
            raise store_format.StoreError(f"{path}: unusable embedding store ({reason})", reason) from exc
        store._seen = (os.path.abspath(path), content_keys.stat_signature(st))
        return store

    def _apply(self, contents: store_format.Contents) -> None:
        """Take the rows, shapes and stat index of a store file read and validated (store_format.read_contents)."""
        self._row, self._stats, self._data = contents.rows, contents.stats, RowBlocks()
        if contents.arrays is not None:
            self._data.adopt(contents.arrays)
        self._shapes.update(contents.shapes)
        self._base_version = contents.version
        self.changed = False  # an older version is rewritten in this one by its next save, not just for that


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.<8 characters>.tmp`` files beside the store: outputs.atomic_write's temporary files of it
    and of its segments, left by a killed run (the caller holds the store's lock, so no other writer has one open)."""
    segment = rf"(?:{re.escape(store_format.SEGMENT_INFIX)}[0-9a-f]{{16}})?"
    pattern = re.compile(rf"\.{re.escape(path.name)}{segment}\.[a-z0-9_]{{8}}\.tmp")
    with os.scandir(path.parent) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass


def remove_store(path: str | Path) -> None:
    """Delete a store's base and segments (e.g. embed's part files once merged); missing files are fine."""
    for file in [Path(path), *store_format.segment_paths(path)]:
        try:
            os.unlink(file)
        except FileNotFoundError:
            pass


class SegmentVanishedError(Exception):
    """A segment listed a moment ago is gone: another run compacted the store while this one read it."""


def read_store(path: Path, fingerprint: str, method: str, fields: Mapping[str, str | store_format.FieldSpec],
               strict: bool) -> EmbeddingStore:
    """The base at ``path`` and its segments. Unusable files: StoreError with ``strict``, else one warning each
    (an unusable base is replaced by an empty store that the next save rebuilds)."""
    for _ in range(LOAD_RETRIES):
        try:
            store = EmbeddingStore._load_file(path, fingerprint, method, fields)
        except store_format.StoreError as exc:
            if strict:
                raise
            warnings.warn(f"{path}: ignoring the embedding store ({exc.reason}); it will be rebuilt", stacklevel=3)
            store = EmbeddingStore(fingerprint, method, fields, path)
            try:  # the unusable file is what the next save replaces, not a store to merge
                store._seen = (os.path.abspath(path), content_keys.stat_signature(os.stat(path)))
            except OSError:
                pass
            store._rebuild = True
        try:
            for segment in store_format.segment_paths(path):
                store._merge_segment(segment, strict)
        except SegmentVanishedError:
            continue  # the base now holds its rows: read it again
        store._clear_fresh()  # what was read is on disk already: the next segment holds only new rows
        store.changed = store._rebuild
        return store
    raise store_format.StoreError(f"{path}: unusable embedding store (its segments kept vanishing while it was "
                                  "read: other runs compacting it)", "segments kept vanishing")


def open_store(path: str | Path, fingerprint: str, method: str, fields: Mapping[str, str | store_format.FieldSpec],
               strict: bool = False) -> EmbeddingStore:
    """The store at ``path`` (base and segments), or an empty one when there is none. A damaged or foreign file is
    ignored with one warning (replaced on the next save); with ``strict`` (a store the user named as input) it is a
    StoreError instead. Segments without a base are merged into the base the next save writes."""
    path = Path(path)
    if not path.exists():
        if strict:
            raise store_format.StoreError(f"{path}: no such embedding store")
        return EmbeddingStore(fingerprint, method, fields, path)
    return read_store(path, fingerprint, method, fields, strict)


def merge_files(paths: Iterable[str | Path], fingerprint: str, method: str,
                fields: Mapping[str, str | store_format.FieldSpec]) -> EmbeddingStore:
    """One store holding the rows and stat entries of every (valid) store file in ``paths`` (strict)."""
    merged = EmbeddingStore(fingerprint, method, fields)
    for path in paths:
        merged.merge(open_store(path, fingerprint, method, fields, strict=True))
    return merged
