"""``samespace undo``: put back every file of an undo manifest written by ``samespace act --apply``.

Each file is restored byte for byte (sha256 checked) by actions.move_file, which never replaces an existing file;
a trashed file is taken back out of the trash entry trash.find accepts (never a path the manifest names alone).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samespace import interrupts, outputs, trash
from samespace.actions import (
    MANIFEST_FORMAT,
    MAX_MANIFEST_BYTES,
    ActError,
    move_file,
    parse_json,
    read_capped,
    sha256_of,
)


@dataclass
class Undone:
    """What :func:`undo` did: files restored, steps already undone, and the refused lines."""

    restored: int = 0
    already: int = 0
    refused: list[str] = field(default_factory=list)


def load_manifest(path: str | Path) -> list[dict[str, Any]]:
    """The steps of an undo manifest, validated (absolute paths, sha256, size, link kind); ActError if not."""
    path = Path(path)
    what = "SameSpace undo manifest"
    doc = parse_json(path, read_capped(path, MAX_MANIFEST_BYTES, what), what)
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("steps"), list):
        raise ActError(f"{path}: not a SameSpace undo manifest")
    for k, rec in enumerate(doc["steps"]):
        rec = rec if isinstance(rec, dict) else {}
        trashed = rec.get("trashed") is True  # where the trash put it is None when the trash cannot be read
        keys = ("original", "keeper") if trashed else ("original", "moved_to", "keeper")
        paths = [rec.get(key) for key in keys] + [rec[key] for key in ("moved_to", "trash_info")
                                                  if trashed and rec.get(key) is not None]
        ok = (all(isinstance(p, str) and os.path.isabs(p) and "\x00" not in p for p in paths)
              and isinstance(rec.get("sha256"), str) and len(rec["sha256"]) == 64
              and all(c in "0123456789abcdef" for c in rec["sha256"])
              and isinstance(rec.get("size"), int) and rec["size"] >= 0
              and rec.get("link") in (None, "hardlink", "symlink")
              and (rec.get("link") is None or isinstance(rec.get("link_target"), str)))
        if not ok:
            raise ActError(f"{path}: steps[{k}] is not a valid step (original, moved_to, keeper, sha256, size, link, "
                           "trash_info)")
    return doc["steps"]


def _our_link(rec: dict[str, Any]) -> bool:
    """Whether the original path holds the link this step made (removing it then loses nothing)."""
    orig = rec["original"]
    try:
        if rec.get("link") == "symlink":
            return os.path.islink(orig) and os.readlink(orig) == rec["link_target"]
        if rec.get("link") == "hardlink":
            here, there = os.lstat(orig), os.stat(rec["link_target"])  # the keeper must still be there
            return stat.S_ISREG(here.st_mode) and (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
    except OSError:
        return False
    return False


def _already_back(rec: dict[str, Any]) -> bool:
    try:
        return ((rec["moved_to"] is None or not os.path.lexists(rec["moved_to"]))
                and stat.S_ISREG(os.lstat(rec["original"]).st_mode) and sha256_of(rec["original"]) == rec["sha256"])
    except OSError:
        return False


def undo(path: str | Path, report: Callable[[str], None] = print) -> Undone:
    """Put every file of a manifest back, byte for byte; a path that now holds something else is refused
    (never replaced). Running it again finds everything back and does nothing."""
    done = Undone()
    steps = load_manifest(path)
    for rec in reversed(steps):
        orig, moved = rec["original"], rec["moved_to"]
        name = outputs.printable_name(orig)
        if os.path.lexists(orig) and not _our_link(rec):
            if _already_back(rec):
                done.already += 1
            else:
                done.refused.append(f"{name}: something exists there now; not replaced")
            continue
        if rec.get("trashed"):
            line = _restore_from_trash(rec)
            if line:
                done.refused.append(line)
            else:
                done.restored += 1
                report(f"restored {name} from the trash")
            continue
        try:
            if sha256_of(moved) != rec["sha256"]:
                done.refused.append(f"{outputs.printable_name(moved)}: changed since it was moved; not restored")
                continue
            with interrupts.deferred_interrupts():  # never a link removed and its file not yet back
                if os.path.lexists(orig):
                    os.unlink(orig)  # the link this step made (checked above), never the keeper itself
                Path(orig).parent.mkdir(parents=True, exist_ok=True)
                move_file(moved, orig, rec["sha256"])
        except OSError as exc:
            done.refused.append(f"{name}: cannot restore from {outputs.printable_name(moved)} "
                                f"({exc.strerror or exc})")
            continue
        done.restored += 1
        report(f"restored {name}")
    _remove_empty_folders(Path(path), steps)
    return done


def _remove_empty_folders(manifest: str | Path, steps: list[dict[str, Any]]) -> None:
    """Remove the folders of the manifest's undo folder (``MANIFEST.files``, where act put the files it replaced
    by links) that restoring left empty, deepest first. A folder that still holds anything is kept: os.rmdir
    removes only an empty one, and only folders on the way to a file a step moved there are tried."""
    top = Path(os.path.abspath(Path(manifest).with_suffix(".files")))
    folders: set[Path] = set()
    for rec in steps:
        if rec.get("trashed") or not isinstance(rec.get("moved_to"), str):
            continue
        folder = Path(os.path.normpath(rec["moved_to"])).parent
        if not folder.is_relative_to(top):  # a --move-to folder, the user's: left as it is
            continue
        folders.update([folder, *(f for f in folder.parents if f.is_relative_to(top))])
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty (a refused file is still there), or gone already
            os.rmdir(folder)


def _restore_from_trash(rec: dict[str, Any]) -> str | None:
    """Put a trashed file back from the trash entry recorded, or another entry of the same path with the same
    bytes; None when restored, else the refused line (a trash that cannot be read back: one line saying so)."""
    orig, name = rec["original"], outputs.printable_name(rec["original"])
    entry = trash.find(orig, rec["size"], rec["sha256"], sha256_of, rec.get("moved_to"))
    if entry is None:
        if not trash.readable():
            return f"{name}: is in the system trash; restore it from there"
        return f"{name}: not in the trash with its recorded size and sha256 (emptied?); not restored"
    try:
        Path(orig).parent.mkdir(parents=True, exist_ok=True)
        move_file(entry.path, orig, rec["sha256"])
    except OSError as exc:
        return f"{name}: cannot restore from {outputs.printable_name(entry.path)} ({exc.strerror or exc})"
    with contextlib.suppress(OSError):  # the entry's description; the file itself is back
        os.unlink(entry.info)
    return None
