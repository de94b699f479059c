"""The system trash: send a file there (the send2trash library) and, on a freedesktop trash, find it again.

send2trash moves a file to the platform's trash (macOS Finder, the Windows recycle bin, the freedesktop trash
of Linux desktops) and never deletes it. It does not say where the file went, so on a freedesktop trash
(``$XDG_DATA_HOME/Trash``, default ``~/.local/share/Trash``, or a volume's ``.Trash/$UID`` / ``.Trash-$UID``) the
file is found again by its ``info/NAME.trashinfo`` (``Path=`` the original path, percent-encoded, relative to
the trash's top folder or absolute; ``DeletionDate=`` local time to the second) and accepted only when its size
and sha256 are the ones recorded. Other platforms' trashes are not read back: undo says the file is there.
"""

from __future__ import annotations

import configparser
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

INFO_SUFFIX = ".trashinfo"
MAX_INFO_BYTES = 64 * 1024  # a .trashinfo holds two short lines; a larger one is not a trash entry


@dataclass(frozen=True)
class Trashed:
    """Where a trashed file lies (``files/NAME``), its ``info/NAME.trashinfo`` and its deletion date."""

    path: str
    info: str
    deleted: str


def readable() -> bool:
    """Whether this platform's trash is a freedesktop trash this module can read back (not macOS, not Windows)."""
    return not sys.platform.startswith(("darwin", "win32", "cygwin"))


def send(path: str | Path) -> None:
    """Move ``path`` to the system trash (send2trash); OSError when it cannot (the file is then left alone)."""
    from send2trash import send2trash  # imported when used: `samespace --help` loads no more than it needs

    send2trash(os.fspath(path))


def home_trash() -> tuple[Path, Path]:
    """(the home trash folder, its top folder) by the XDG base directory rules, read now (tests set it)."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "Trash", Path(data_home)


def _mount_point(path: str) -> Path:
    probe = Path(os.path.realpath(os.path.dirname(os.path.abspath(path))))
    while not os.path.ismount(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def trash_folders(original: str) -> list[tuple[Path, Path]]:
    """(trash folder, top folder) pairs where send2trash may have put ``original``: the home trash, then the
    original's volume trashes."""
    top = _mount_point(original)
    uid = str(os.getuid()) if hasattr(os, "getuid") else ""
    return [home_trash(), (top / ".Trash" / uid, top), (top / f".Trash-{uid}", top)]


def read_info(info: Path, top: Path) -> tuple[str, str] | None:
    """(the original's absolute path, DeletionDate) of a ``.trashinfo`` file, or None if it is not one."""
    try:
        with open(info, "rb") as f:
            data = f.read(MAX_INFO_BYTES + 1)
        if len(data) > MAX_INFO_BYTES:
            return None
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(data.decode("utf-8"))
        section = parser["Trash Info"]
        raw = os.fsdecode(unquote_to_bytes(section["Path"]))
        return os.path.abspath(os.path.join(top, raw)), section.get("DeletionDate", "")
    except (OSError, ValueError, KeyError, configparser.Error):
        return None


def entries(original: str) -> Iterator[Trashed]:
    """Every trash entry whose ``.trashinfo`` names ``original`` (absolute), newest deletion first."""
    wanted = os.path.abspath(original)
    found: list[Trashed] = []
    seen: set[str] = set()
    for folder, top in trash_folders(wanted):
        info_dir = folder / "info"
        try:
            names = os.listdir(info_dir)
        except OSError:
            continue
        for name in names:
            if not name.endswith(INFO_SUFFIX):
                continue
            parsed = read_info(info_dir / name, top)
            stored = str(folder / "files" / name[: -len(INFO_SUFFIX)])
            if parsed and parsed[0] == wanted and stored not in seen:
                seen.add(stored)
                found.append(Trashed(stored, str(info_dir / name), parsed[1]))
    yield from sorted(found, key=lambda t: t.deleted, reverse=True)


def find(original: str, size: int, sha256: str, digest: Callable[[str], str], recorded: str | None = None
         ) -> Trashed | None:
    """The trash entry of ``original`` whose file has exactly ``size`` bytes and ``sha256`` (by ``digest``): the
    ``recorded`` one first, else the newest such; None when there is none or the platform's trash cannot be read back.
    Only entries listed in a trash folder with a ``.trashinfo`` naming ``original`` count (never a path a
    manifest names on its own)."""
    if not readable():
        return None
    for entry in sorted(entries(original), key=lambda e: e.path != recorded):  # stable: newest next
        try:
            if os.lstat(entry.path).st_size == size and digest(entry.path) == sha256:
                return entry
        except OSError:
            continue
    return None
