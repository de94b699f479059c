"""The embedding store: per-image embeddings saved between runs, keyed by file content and scorer identity.

A second ``find_duplicates.py`` run over the same photos embeds only the photos it has not seen: a photo is
found by the hash of its bytes (:func:`content_key`), so renamed or moved photos are recognised, and an
edited photo gets a new key. A store belongs to one scorer: its :func:`scorer_fingerprint` (decoder,
preprocessing, every weight, the hash function) is in the header, and a store with another fingerprint is
never used.

Reading every photo's bytes on every run would cost as much I/O as the first run's decoding, so the store
also keeps a stat index: (absolute path, size, mtime in ns) -> content key. A file whose size and mtime are
unchanged is not read again; any change re-hashes it (as git's index and rsync do).

File format: an uncompressed ``.npz`` (numpy's zip of ``.npy`` arrays), read with ``allow_pickle=False``:

- ``header``: UTF-8 JSON as uint8 ``{"format", "version", "fingerprint", "method", "fields": {name: [dtype,
  row shape]}, "rows"}``;
- ``keys``: ``S32`` content keys, one per row; one array per embedding field (rows in the same order);
- the stat index: ``paths`` (UTF-8 bytes, concatenated) with ``path_ends`` (int64), ``sizes``, ``mtimes``
  (int64) and ``path_keys`` (``S32``).

Everything is validated when read (format, version, fingerprint, field names, dtypes and shapes, key
uniqueness, finite values); a damaged or foreign store is ignored with one warning and rebuilt. Writes are
atomic (``data.atomic_write``), so a reader never sees half a store.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

import data

FORMAT = "samespace-embeddings"
VERSION = 1
KEY_BYTES = 16  # blake2b digest size: 32 hex characters
KEY_DTYPE = f"S{2 * KEY_BYTES}"
_READ_CHUNK = 1 << 20


class StoreError(ValueError):
    """A store file that cannot be used, with the reason."""


def content_key(path: str | Path) -> str:
    """blake2b-128 of the file's bytes, as 32 hex characters: the identity of a photo, whatever its name."""
    digest = hashlib.blake2b(digest_size=KEY_BYTES)
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
    """The decoder's identity: data.decode_image's code, the image size and Pillow's version."""
    from PIL import __version__ as pillow_version

    return _sha(inspect.getsource(data.decode_image), inspect.getsource(data._to_rgb), str(data.IMAGE_SIZE),
                pillow_version)


def preprocessing_identity() -> str:
    """The backbone input preprocessing's identity, from the one place model.py defines it."""
    import model

    return model._transform_identity()


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
    import scoring

    name = type(scorer).__name__
    if isinstance(scorer, scoring.HashScorer):
        import imagehash

        function = scoring.HASH_FUNCTIONS[scorer.name]
        return _sha(name, scorer.name, decode_identity(), inspect.getsource(function),
                    inspect.getsource(data.hash_codes), imagehash.__version__)
    if isinstance(scorer, scoring.CosineScorer):
        extractor = scorer.extractor
        weights = extractor.fingerprint() if hasattr(extractor, "fingerprint") else _state_digest(extractor)
        parts = [name, decode_identity(), preprocessing_identity(), weights, inspect.getsource(scoring.l2_normalise)]
        if isinstance(scorer, scoring.VerifiedScorer):  # its keypoints too: the detector, its settings, OpenCV
            import cv2

            import verification

            parts += [inspect.getsource(verification.local_features), inspect.getsource(verification.unsquashed),
                      inspect.getsource(verification.pack), str(verification.MAX_KEYPOINTS),
                      str(verification.MAX_ASPECT), cv2.__version__]
        return _sha(*parts)
    if isinstance(scorer, scoring.ModelScorer):
        return _sha(name, decode_identity(), preprocessing_identity(), _state_digest(scorer.model),
                    inspect.getsource(scoring.l2_normalise))
    raise TypeError(f"no embedding-store fingerprint for {name}")


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class EmbeddingStore:
    """Embeddings of one scorer, one row per distinct photo content, plus the stat index.

    ``fields`` maps a field name to its dtype (e.g. ``{"vectors": "float32"}``); row shapes are fixed by the
    first rows added or read.
    """

    def __init__(self, fingerprint: str, method: str, fields: dict[str, str]) -> None:
        self.fingerprint = fingerprint
        self.method = method
        self.dtypes = {name: np.dtype(dtype) for name, dtype in fields.items()}
        self._row: dict[str, int] = {}
        self._arrays: dict[str, np.ndarray] | None = None
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in fields}
        self._stats: dict[str, tuple[int, int, str]] = {}
        self.changed = False

    # rows ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, key: str) -> bool:
        return key in self._row

    def keys(self) -> list[str]:
        """Content keys in row order."""
        return sorted(self._row, key=self._row.__getitem__)

    def add(self, keys: Sequence[str], fields: dict[str, np.ndarray]) -> None:
        """Add rows (keys already present are ignored: the same content has the same embedding)."""
        if set(fields) != set(self.dtypes):
            raise ValueError(f"fields {sorted(fields)} != store fields {sorted(self.dtypes)}")
        seen: set[str] = set()
        new = []
        for k, key in enumerate(keys):
            if key not in self._row and key not in seen:
                seen.add(key)
                new.append(k)
        if not new:
            return
        for name, array in fields.items():
            array = np.asarray(array)
            if len(array) != len(keys):
                raise ValueError(f"field {name}: {len(array)} rows for {len(keys)} keys")
            self._chunks[name].append(np.ascontiguousarray(array[new], dtype=self.dtypes[name]))
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
        return {name: array[rows] for name, array in self._consolidate().items()}

    # stat index ---------------------------------------------------------------------------

    def key_for(self, path: str | Path) -> str:
        """The content key of a file: from the stat index when its size and mtime are unchanged, else hashed.

        Raises OSError when the file cannot be read.
        """
        absolute = os.path.abspath(path)
        st = os.stat(absolute)
        known = self._stats.get(absolute)
        if known is not None and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            return known[2]
        key = content_key(absolute)
        self._stats[absolute] = (st.st_size, st.st_mtime_ns, key)
        self.changed = True
        return key

    def stat_entry(self, path: str | Path) -> tuple[int, int, str] | None:
        """(size, mtime ns, content key) recorded for a file, or None."""
        return self._stats.get(os.path.abspath(path))

    def record(self, path: str | Path, size: int, mtime_ns: int, key: str) -> None:
        """Add a stat-index entry (used when merging stores)."""
        self._stats[os.path.abspath(path)] = (int(size), int(mtime_ns), key)
        self.changed = True

    def stat_entries(self) -> dict[str, tuple[int, int, str]]:
        """absolute path -> (size, mtime ns, content key)."""
        return dict(self._stats)

    def listed_paths(self) -> list[str]:
        """Every path of the stat index whose content has a row, sorted."""
        return sorted(p for p, (_, _, key) in self._stats.items() if key in self._row)

    def merge(self, other: EmbeddingStore) -> None:
        """Add another store's rows and stat entries (same fingerprint)."""
        if other.fingerprint != self.fingerprint:
            raise StoreError("cannot merge stores of different scorers")
        keys = other.keys()
        if keys:
            self.add(keys, other.get(keys))
        for path, (size, mtime, key) in other.stat_entries().items():
            self.record(path, size, mtime, key)

    # file ---------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The store file's content, rows sorted by key and paths sorted (same content -> same bytes)."""
        keys = sorted(self._row)
        arrays = self.get(keys) if keys else {}
        paths = sorted(self._stats)
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        header = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "method": self.method,
            "rows": len(keys),
            "fields": {name: [self.dtypes[name].str, list(arrays[name].shape[1:]) if keys else None]
                       for name in self.dtypes},
        }
        out = {
            "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8),
            "keys": np.array(keys, dtype=KEY_DTYPE).reshape(-1),
            "paths": np.frombuffer(b"".join(encoded), np.uint8),
            "path_ends": np.cumsum([len(e) for e in encoded], dtype=np.int64),
            "sizes": np.array([self._stats[p][0] for p in paths], np.int64),
            "mtimes": np.array([self._stats[p][1] for p in paths], np.int64),
            "path_keys": np.array([self._stats[p][2] for p in paths], dtype=KEY_DTYPE).reshape(-1),
        }
        for name, dtype in self.dtypes.items():
            out[f"field_{name}"] = arrays[name] if keys else np.zeros(0, dtype)
        buffer = io.BytesIO()
        np.savez(buffer, **out)
        return buffer.getvalue()

    def save(self, path: str | Path) -> None:
        """Write the store atomically (a temporary file renamed over ``path``); creates the folder."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data.atomic_write(path, self.to_bytes())
        self.changed = False

    @classmethod
    def load(cls, path: str | Path, fingerprint: str, method: str, fields: dict[str, str]) -> EmbeddingStore:
        """Read and validate a store file; raises StoreError (or OSError / zip errors) when it is unusable."""
        store = cls(fingerprint, method, fields)
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            expected = {"header", "keys", "paths", "path_ends", "sizes", "mtimes", "path_keys"}
            expected |= {f"field_{name}" for name in fields}
            if names != expected:
                raise StoreError(f"arrays {sorted(names)} are not a {FORMAT} v{VERSION} store")
            try:
                header = json.loads(bytes(z["header"]).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StoreError(f"unreadable header ({exc})") from exc
            if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
                raise StoreError(f"not a {FORMAT} v{VERSION} store")
            if header.get("fingerprint") != fingerprint or header.get("method") != method:
                theirs = f"{header.get('method')}, fingerprint {str(header.get('fingerprint'))[:12]}..."
                raise StoreError(f"made by another scorer ({theirs}; this run: {method}, {fingerprint[:12]}...)")
            keys = z["keys"]
            rows = header.get("rows")
            if keys.dtype != np.dtype(KEY_DTYPE) or keys.ndim != 1 or len(keys) != rows:
                raise StoreError("keys do not match the header")
            if len(np.unique(keys)) != len(keys):
                raise StoreError("duplicate keys")
            arrays = {}
            for name, dtype in store.dtypes.items():
                array = z[f"field_{name}"]
                spec = header.get("fields", {}).get(name)
                if array.dtype != dtype or spec is None or spec[0] != dtype.str or len(array) != rows:
                    raise StoreError(f"field {name}: dtype or row count differs from the header")
                if rows and list(array.shape[1:]) != spec[1]:
                    raise StoreError(f"field {name}: shape {array.shape} differs from the header")
                if array.dtype.kind == "f" and not np.isfinite(array).all():
                    raise StoreError(f"field {name}: non-finite values")
                arrays[name] = array
            blob, ends = z["paths"], z["path_ends"]
            sizes, mtimes, path_keys = z["sizes"], z["mtimes"], z["path_keys"]
            m = len(ends)
            if (blob.dtype != np.uint8 or ends.dtype != np.int64 or len(sizes) != m or len(mtimes) != m
                    or len(path_keys) != m or path_keys.dtype != np.dtype(KEY_DTYPE)
                    or (m and (ends[-1] != len(blob) or np.any(np.diff(ends) < 0) or ends[0] < 0))):
                raise StoreError("the stat index is inconsistent")
            raw = blob.tobytes()
            starts = np.concatenate([[0], ends[:-1]]) if m else ends
            for s, e, size, mtime, key in zip(starts.tolist(), ends.tolist(), sizes.tolist(), mtimes.tolist(),
                                              path_keys.tolist(), strict=True):
                store._stats[raw[s:e].decode("utf-8", "surrogateescape")] = (size, mtime, key.decode("ascii"))
        store._row = {k.decode("ascii"): i for i, k in enumerate(keys.tolist())}
        store._arrays = arrays if rows else None
        store.changed = False
        return store


_UNUSABLE = (StoreError, OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


def open_store(path: str | Path, fingerprint: str, method: str, fields: dict[str, str],
               strict: bool = False) -> EmbeddingStore:
    """The store at ``path``, or an empty one when there is none.

    A damaged or foreign file is ignored with one warning (it is replaced on the next save); with ``strict``
    (a store the user named as input) it is a StoreError instead.
    """
    path = Path(path)
    if not path.exists():
        if strict:
            raise StoreError(f"{path}: no such embedding store")
        return EmbeddingStore(fingerprint, method, fields)
    try:
        return EmbeddingStore.load(path, fingerprint, method, fields)
    except _UNUSABLE as exc:
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StoreError) else str(exc)
        if strict:
            raise StoreError(f"{path}: unusable embedding store ({reason})") from exc
        warnings.warn(f"{path}: ignoring the embedding store ({reason}); it will be rebuilt", stacklevel=2)
        store = EmbeddingStore(fingerprint, method, fields)
        store.changed = True
        return store


def merge_files(paths: Iterable[str | Path], fingerprint: str, method: str, fields: dict[str, str]) -> EmbeddingStore:
    """One store holding the rows and stat entries of every (valid) store file in ``paths`` (strict)."""
    merged = EmbeddingStore(fingerprint, method, fields)
    for path in paths:
        merged.merge(open_store(path, fingerprint, method, fields, strict=True))
    return merged
