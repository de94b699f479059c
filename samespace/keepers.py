"""Which photo of a duplicate group to keep, and why.

The default rule keeps the photo with the most pixels (read from the image header: PIL opens files lazily, so
the pixels are never decoded), then the largest file, then the oldest modification time, then the first path
in sorted order, so the choice is deterministic. ``--keep largest|newest|oldest`` puts that criterion first
and the default order after it; ``--prefer DIR`` makes photos under DIR win before any rule, and library
photos (``find --against``) win before everything, since they are never acted on.
"""

from __future__ import annotations

import datetime
import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from samespace import image_formats

RULES = ("resolution", "largest", "newest", "oldest")
DEFAULT_RULE = "resolution"


@dataclass(frozen=True)
class Facts:
    """What the keeper rule compares: a photo's path, pixel size (0 x 0 when its header is unreadable), file
    size in bytes and modification time in nanoseconds."""

    path: str
    width: int
    height: int
    size: int
    mtime_ns: int

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height


@dataclass(frozen=True)
class Choice:
    """The photo kept in a group and the reason, e.g. ``highest resolution (4032x3024)``."""

    keeper: Facts
    reason: str


def read_facts(path: str | Path) -> Facts:
    """The facts of one photo. Only the header is parsed (Image.open is lazy); OSError if it cannot be opened
    or is not a regular file (opened without blocking and checked first: a FIFO is never waited on)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        image_formats.enable_heif()
        try:
            with Image.open(f) as image:
                width, height = image.size
        except Exception:  # noqa: BLE001 - any unreadable header counts as 0 pixels, never fails the plan
            width = height = 0
    return Facts(str(path), int(width), int(height), st.st_size, st.st_mtime_ns)


def _when(mtime_ns: int) -> str:
    return datetime.datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _criteria(rule: str) -> list[tuple[Callable[[Facts], object], Callable[[Facts], str]]]:
    """(sort key, smaller first; reason) per criterion, the chosen rule first and the default order after it."""
    table = {
        "resolution": (lambda f: -f.pixels, lambda f: f"highest resolution ({f.width}x{f.height})"),
        "largest": (lambda f: -f.size, lambda f: f"largest file ({f.size:,} bytes)"),
        "oldest": (lambda f: f.mtime_ns, lambda f: f"oldest ({_when(f.mtime_ns)})"),
        "newest": (lambda f: -f.mtime_ns, lambda f: f"newest ({_when(f.mtime_ns)})"),
    }
    if rule not in table:
        raise ValueError(f"--keep {rule}: expected one of {', '.join(RULES)}")
    order = [rule] + [r for r in ("resolution", "largest", "oldest") if r != rule]
    if rule == "newest":
        order.remove("oldest")  # oldest would only undo newest's order
    return [table[r] for r in order] + [(lambda f: f.path, lambda f: "first in path order")]


def _under(path: str, folders: Sequence[Path]) -> Path | None:
    real = Path(os.path.abspath(path))
    return next((f for f in folders if real.is_relative_to(f)), None)


def choose_keeper(
    members: Sequence[Facts],
    rule: str = DEFAULT_RULE,
    prefer: Sequence[str | Path] = (),
    library: Sequence[str | Path] = (),
) -> Choice:
    """The photo to keep among ``members`` and the deciding reason.

    Library photos win first (nothing in a library is ever acted on), then photos under a ``prefer`` folder,
    then ``rule``'s criterion and the default order. The reason names the first criterion that separates the
    keeper from the runner-up.
    """
    if not members:
        raise ValueError("a group needs at least one photo")
    libs = [Path(os.path.abspath(f)) for f in library]
    prefs = [Path(os.path.abspath(f)) for f in prefer]
    criteria: list[tuple[Callable[[Facts], object], Callable[[Facts], str]]] = [
        (lambda f: _under(f.path, libs) is None, lambda f: f"in the library ({_under(f.path, libs)})"),
        (lambda f: _under(f.path, prefs) is None, lambda f: f"under the preferred folder {_under(f.path, prefs)}"),
        *_criteria(rule),
    ]
    ranked = sorted(members, key=lambda f: tuple(key(f) for key, _ in criteria))
    keeper = ranked[0]
    if len(ranked) == 1:
        return Choice(keeper, "the only photo")
    runner_up = ranked[1]
    for key, reason in criteria:
        if key(keeper) != key(runner_up):
            return Choice(keeper, reason(keeper))
    return Choice(keeper, "first in path order")  # the same path twice
