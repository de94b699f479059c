"""Content keys (a hash of a photo's bytes) and the stat entries that spare re-reading an unchanged photo.

A file whose (size, mtime ns, inode, ctime ns) is unchanged is not read again; any change re-hashes it (as
git's index does). The inode and ctime catch a photo rewritten in place with its size kept and its mtime set
back (``os.utime`` cannot set the ctime).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, NamedTuple

from samespace import hashing

KEY_BYTES = 16  # blake2b digest size: 32 hex characters
KEY_DTYPE = f"S{2 * KEY_BYTES}"
UNKNOWN_INODE = 2**64 - 1  # a stat entry that never matches a file (from a version 1 store): it is re-hashed
READ_CHUNK = 1 << 20
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


def open_regular(path: str | Path) -> tuple[BinaryIO, os.stat_result]:
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


def hash_file(f: BinaryIO) -> str:
    return hashing.file_digest(f, hashlib.blake2b(digest_size=KEY_BYTES), READ_CHUNK)


def content_key_of(content: bytes) -> str:
    """The content key of bytes already read: the same digest as :func:`content_key` of a file holding them."""
    return hashlib.blake2b(content, digest_size=KEY_BYTES).hexdigest()


def content_key(path: str | Path) -> str:
    """blake2b-128 of the file's bytes, as 32 hex characters: the identity of a photo, whatever its name.

    Raises OSError when the file cannot be read or is not a regular file (a FIFO would block).
    """
    f, _ = open_regular(path)
    with f:
        return hash_file(f)


def keys_or_none(paths: Iterable[str | Path]) -> list[str | None]:
    """The content key of each file as it is now, None where it cannot be read (find's result records them, so
    that acting on it later can tell a photo from another file now at its path)."""
    keys: list[str | None] = []
    for path in paths:
        try:
            keys.append(content_key(path))
        except OSError:
            keys.append(None)
    return keys


def check_key(key: str) -> None:
    if not isinstance(key, str) or len(key) > 2 * KEY_BYTES or not key.isascii():
        raise ValueError(f"content key {key!r}: expected at most {2 * KEY_BYTES} ASCII characters")


def stat_signature(st: os.stat_result) -> tuple[int, ...]:
    """Which version of a file: atomic_write makes a new inode, and any write moves the ctime."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
