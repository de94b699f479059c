"""Check every output location of a command before any work starts.

Every command line of SameSpace (find_duplicates.py, model_inference.py, data.py, model_def.py) names its
outputs first and calls :func:`check_outputs`, so a bad location is one line and exit status 2 before any photo
is decoded, and never a traceback after the work. Refused:

- a path that is an input image, or lies inside an input folder and has an image extension
  (photos are never modified, even with ``--overwrite``);
- a file output that is a directory, a directory output that is a file, or one under a file;
- a missing folder for a file output; a folder that cannot be written to (probed by creating and removing a
  temporary file); a name too long for the file system (including atomic_write's temporary-name suffix);
- an existing file that SameSpace did not write (see :func:`is_ours`), or one it wrote of another kind than the
  target's (:func:`file_kind`: a store never replaces a JSON result, nor a CSV an undo manifest), unless
  ``overwrite``; an existing photo anywhere (by extension or by its first bytes), even with ``overwrite``;
- an existing path that is not a regular file (a device, FIFO or socket) or is a symbolic link: a write renames
  a new file over the path, which would replace the node or the link itself;
- two outputs naming one path, or both standard output.

``-`` and ``/dev/stdout`` name standard output where a target allows it (``Target.stream``): the content is
written there directly, so ``--json /dev/stdout | jq`` works with stdout a pipe. Deciding never opens an output
for reading unless it is a regular file (a FIFO or a terminal would block).

:func:`atomic_write` is the one writer of every file the project writes; it refuses the same special paths
again at the moment of writing, and an error names the file.

SameSpace recognises its own files and their kind by their first bytes (:data:`SIGNATURES`, :data:`MARKERS`,
:data:`GENERATOR`), so running a command again with the same outputs needs no flag.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Written into the HTML report (<meta name="generator">) and into PNG plots (the "Software" text chunk).
GENERATOR = "SameSpace"
# The kinds of file SameSpace writes (Target.kind), as messages name them.
RESULT_JSON = "a find result (JSON)"
PAIRS_CSV = "a CSV of duplicate pairs"
REVIEW_PAGE = "a review page (HTML)"
STORE = "an embedding store"
EVALUATION_JSON = "an evaluation report (JSON)"
SCORES_CSV = "a CSV of pair scores"
PLOT = "a plot (PNG)"
UNDO_MANIFEST = "an undo manifest (samespace undo reads it to put files back)"
# The first bytes of each JSON / CSV file SameSpace writes, and its kind (the writers' tests check that they match).
SIGNATURES: dict[bytes, str] = {
    b'{\n "groups": [': RESULT_JSON,  # find_duplicates.py --json
    b'{\n  "data_dir": ': EVALUATION_JSON,  # model_inference.py --json
    b"group,path1,path2,score,tier\n": PAIRS_CSV,  # samespace find --csv
    b"group,path1,path2,score\n": PAIRS_CSV,  # samespace find --csv before pairs had a tier
    b"image1,image2,label,": SCORES_CSV,  # model_inference.py --scores
    b'{\n "format": "samespace-undo"': UNDO_MANIFEST,  # samespace act --apply (actions.Manifest)
}
# Bytes found within the first HEAD_BYTES of the other files SameSpace writes, and their kind.
MARKERS: dict[bytes, str] = {
    b'"format": "samespace-embeddings"': STORE,  # the embedding store's header (embedding_store.py; a zip of .npy)
    f'<meta name="generator" content="{GENERATOR}'.encode(): REVIEW_PAGE,  # find_duplicates.py --html
    f"Software\x00{GENERATOR}".encode(): PLOT,  # model_inference.py --plots (PNG tEXt chunk)
}
HEAD_BYTES = 4096
# outputs.atomic_write writes ".<name>.<8 random characters>.tmp" beside the target first.
TEMP_NAME_EXTRA = len("..") + 8 + len(".tmp")
# A store's segments (store_format.SEGMENT_INFIX + 16 hex) and embed's parts (".part-K-of-N") are named after it.
STORE_NAME_EXTRA = len(".seg-") + 16
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # the photos the project reads (data.py imports them from here)
# Names of standard output, for the outputs that may stream there (Target.stream).
STDOUT_NAMES = frozenset({"-", "/dev/stdout"})
STDOUT_PLACE = Path("/dev/stdout")  # where every name of STDOUT_NAMES writes, for the check of two outputs at one place
# First bytes of photo formats (cameras, phones, raw files, the web). A file starting so is never replaced.
PHOTO_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"GIF87a"), (0, b"GIF89a"),
    (0, b"II*\x00"), (0, b"MM\x00*"),  # TIFF and the TIFF-based raw files (DNG, CR2, NEF, ARW)
    (0, b"IIRO"), (0, b"IIU\x00"), (0, b"FUJIFILMCCD-RAW"),  # Olympus, Panasonic, Fuji raw
    (0, b"BM"),  # BMP
    (0, b"\xff\x0a"), (0, b"\x00\x00\x00\x0cJXL "),  # JPEG XL
    (0, b"\x00\x00\x00\x0cjP  "),  # JPEG 2000
    (4, b"ftypheic"), (4, b"ftypheix"), (4, b"ftypmif1"), (4, b"ftypmsf1"), (4, b"ftypavif"),
    (4, b"ftypcrx "),  # HEIF / AVIF / Canon CR3
)


def printable_name(name: str, quote: bool = True) -> str:
    """A file name as one printable line: unchanged when it is plain text, else quoted with backslash escapes.

    New lines and other control characters become ``\\n``, ``\\t``, ``\\x1b`` ...; bytes that are not UTF-8
    (which Python keeps as lone surrogates, os.fsdecode) become ``\\xff``. ``quote=False`` escapes the same way
    without the surrounding quotes (for reasons and messages). JSON and CSV outputs keep the exact name instead.
    """
    if name.isprintable():
        return name
    out = []
    for char in name:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif char == "'" and quote:
            out.append("\\'")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "'" + "".join(out) + "'" if quote else "".join(out)


class OutputError(ValueError):
    """An output location that cannot or must not be written, naming the option and the path."""


@dataclass(frozen=True)
class Target:
    """One output of a command: its option (for messages), its path, and whether it is a folder.

    A folder output lists the file names it will hold (``members``), which are checked like file outputs.
    ``stream``: ``-`` or ``/dev/stdout`` may name standard output (text outputs). ``kind``: what the file (or a
    folder's members) will hold (:data:`RESULT_JSON` ...); an existing SameSpace file of another kind is replaced
    only with ``overwrite``. Without a kind, any file SameSpace wrote may be replaced.
    """

    option: str
    path: Path
    is_dir: bool = False
    members: tuple[str, ...] = ()
    stream: bool = False
    kind: str = ""


def is_stdout(path: str | Path) -> bool:
    """Whether ``path`` names standard output (``-`` or ``/dev/stdout``)."""
    return str(path) in STDOUT_NAMES


def _read_head(path: str | Path) -> bytes | None:
    """The first HEAD_BYTES of a regular file, or None (missing, unreadable, a link, or not a regular file).

    Opened without following a link and without blocking, and read only once fstat says it is a regular file:
    a FIFO or a device is never read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, HEAD_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)


def file_kind(path: str | Path) -> str | None:
    """Which kind of SameSpace file ``path`` is (:data:`RESULT_JSON` ...; by its first bytes), ``""`` for an
    empty file (nothing to lose), or None: missing, not a regular file, or not written by SameSpace."""
    head = _read_head(path)
    if head is None:
        return None
    if not head:
        return ""
    for signature, kind in SIGNATURES.items():
        if head.startswith(signature):
            return kind
    return next((kind for marker, kind in MARKERS.items() if marker in head), None)


def is_ours(path: str | Path) -> bool:
    """Whether ``path`` is a file SameSpace wrote (by its first bytes), or an empty file (nothing to lose)."""
    return file_kind(path) is not None


def looks_like_photo(path: str | Path, image_extensions: Collection[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether the existing regular file ``path`` is a photo: by its extension or by its first bytes."""
    if Path(path).suffix.lower() in image_extensions:
        return True
    head = _read_head(path) or b""
    return any(head[offset : offset + len(magic)] == magic for offset, magic in PHOTO_SIGNATURES)


def special_file_kind(path: str | Path) -> str | None:
    """What ``path`` is when it exists and is not a plain regular file (``symbolic link``, ``FIFO`` ...); else
    None. A write would rename a new file over it, replacing the link or the node itself."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    kinds = ((stat.S_ISLNK, "symbolic link"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
             (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))
    return next((name for test, name in kinds if test(mode)), None)


def _name_max(folder: Path) -> int:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    return 255


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` (or itself) that exists, resolving nothing below it."""
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def _writable(folder: Path) -> str | None:
    """None when a file can be created in ``folder``; else the reason (root ignores permission bits, so probe)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".samespace-probe.", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(name)
    return None


def _inside(path: Path, folders: Iterable[Path]) -> Path | None:
    for folder in folders:
        if path == folder or path.is_relative_to(folder):
            return folder
    return None


def _check_length(target: Target, path: Path, existing: Path) -> None:
    if len(os.fsencode(str(path))) >= 4096:
        raise OutputError(f"{target.option} {target.path}: path too long ({len(os.fsencode(str(path)))} bytes)")
    name_max = _name_max(existing if existing.is_dir() else existing.parent)
    below = path.relative_to(existing).parts if path != existing else ()
    if not below and not target.is_dir:  # it exists: replacing it still writes longer names beside it
        below = (path.name,)
    extra = TEMP_NAME_EXTRA + (STORE_NAME_EXTRA if target.kind == STORE else 0)
    for k, part in enumerate(below):
        limit = name_max - (extra if k == len(below) - 1 and not target.is_dir else 0)
        if len(os.fsencode(part)) > limit:
            raise OutputError(
                f"{target.option} {target.path}: file name too long ({len(os.fsencode(part))} bytes; "
                f"at most {limit} here)"
            )


def _check_one(
    target: Target,
    inputs: Sequence[Path],
    input_files: Collection[Path],
    overwrite: bool,
    image_exts: Collection[str],
    in_new_folder: bool = False,
) -> None:
    """Check one target (check_outputs has checked that no other output names its place).

    ``in_new_folder``: a member of a folder output that the command creates (its folder need not exist yet).
    """
    raw = Path(target.path)
    if str(target.path) == "" or str(target.path).endswith(os.sep) and not target.is_dir:
        raise OutputError(f"{target.option} {target.path!s}: not a file name")
    if is_stdout(target.path) and not target.is_dir:
        if target.stream:
            return  # written straight to standard output, nothing replaced
        raise OutputError(f"{target.option} {target.path}: cannot be written to standard output; give a file name")
    path = Path(os.path.abspath(raw))
    resolved = path.resolve()
    existing = _existing_ancestor(path)
    if existing != path and not existing.is_dir():
        raise OutputError(f"{target.option} {target.path}: {existing} is not a folder")
    _check_length(target, path, existing)
    if target.is_dir:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{target.option} {target.path}: is a file, expected a folder")
        reason = _writable(existing)
        if reason:
            raise OutputError(f"{target.option} {target.path}: cannot write in {existing} ({reason})")
        for name in target.members:
            member = Target(target.option, raw / name, kind=target.kind)
            _check_one(member, inputs, input_files, overwrite, image_exts, not path.is_dir())
        return
    if path.is_dir():
        raise OutputError(f"{target.option} {target.path}: is a folder, expected a file name")
    if not path.parent.is_dir() and not in_new_folder:
        raise OutputError(f"{target.option} {target.path}: folder {path.parent} does not exist")
    folder = _inside(resolved, inputs)
    image_in_input = folder is not None and resolved.suffix.lower() in image_exts
    if resolved in input_files or image_in_input and resolved.exists():
        raise OutputError(f"{target.option} {target.path}: is one of the input photos; photos are never overwritten")
    if image_in_input:
        raise OutputError(
            f"{target.option} {target.path}: has an image extension inside the input folder {folder}; "
            "photos are never overwritten, choose another name"
        )
    kind = special_file_kind(path)
    if kind is not None:
        raise OutputError(
            f"{target.option} {target.path}: is a {kind}, not a regular file; SameSpace writes only regular files "
            "(it would replace the " + ("link itself" if kind == "symbolic link" else kind) + "), choose a file name"
        )
    found = file_kind(path)
    if path.exists() and found is None and looks_like_photo(path, image_exts):
        raise OutputError(f"{target.option} {target.path}: is a photo; photos are never overwritten, even with "
                          "--overwrite")
    if path.exists() and not overwrite and found is None:
        raise OutputError(
            f"{target.option} {target.path}: exists and was not written by SameSpace; "
            "pass --overwrite to replace it, or choose another name"
        )
    if not overwrite and found and target.kind and found != target.kind:
        raise OutputError(
            f"{target.option} {target.path}: holds {found}, not {target.kind}; "
            "pass --overwrite to replace it, or choose another name"
        )
    if not in_new_folder:  # else the folder target probed its nearest existing ancestor
        reason = _writable(path.parent)
        if reason:
            raise OutputError(f"{target.option} {target.path}: cannot write in {path.parent} ({reason})")


def check_outputs(
    targets: Iterable[Target],
    inputs: Iterable[str | Path] = (),
    input_files: Iterable[str | Path] = (),
    overwrite: bool = False,
    image_extensions: Collection[str] = IMAGE_EXTENSIONS,
) -> None:
    """Raise :class:`OutputError` (one line naming the option and path) unless every target may be written.

    ``inputs`` are the input folders (an output with an image extension inside one is refused), ``input_files``
    individual input files (never an output). ``overwrite`` allows replacing existing files SameSpace did not
    write, or wrote as another kind of file; it never allows replacing a photo.
    """
    folders = [Path(os.path.abspath(f)).resolve() for f in inputs]
    files = {Path(os.path.abspath(f)).resolve() for f in input_files}
    targets = list(targets)
    seen: dict[Path, Target] = {}
    for target in targets:  # first: two outputs at one place is the problem to name, whatever is there now
        if is_stdout(target.path) and not target.is_dir:
            where = STDOUT_PLACE  # two documents on one stream: neither would parse
        elif str(target.path):
            where = Path(os.path.abspath(target.path)).resolve()
        else:
            continue
        for place in [where, *(where / name for name in target.members)]:
            if place in seen:
                name = "standard output" if place == STDOUT_PLACE else str(place)
                raise OutputError(f"{seen[place].option} and {target.option} both name {name}; give each output its "
                                  "own path")
            seen[place] = target
    for target in targets:
        _check_one(target, folders, files, overwrite, image_extensions)


def atomic_write(path: str | Path, content: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` (text as UTF-8) to a temporary file in the same folder, then rename it over ``path``.

    A reader never sees a half-written file, and a failure leaves the old file (or none) in place. ``content``
    may be a function that writes into the open binary file (e.g. ``lambda f: torch.save(table, f)``): large
    outputs are then streamed to disk instead of being built in memory first. ``-`` or ``/dev/stdout``: written
    to standard output directly. A symbolic link, device, FIFO or socket at ``path`` is refused
    (:class:`OutputError`): the rename would replace the node itself. An OSError names ``path``.
    """
    if is_stdout(path):
        _write_stream(sys.stdout.buffer, content)
        return
    path = Path(path)
    kind = special_file_kind(path)
    if kind is not None:
        raise OutputError(f"{path}: is a {kind}, not a regular file; not replaced")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise with_path(exc, path) from exc
    try:
        if path.exists():
            mode = path.stat().st_mode & 0o777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)  # mkstemp makes 0600; give the output the permissions a plain open() would
        with os.fdopen(fd, "wb") as f:
            _write_stream(f, content)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise with_path(exc, path) from exc
        raise


def _write_stream(f: BinaryIO, content: str | bytes | Callable[[BinaryIO], object]) -> None:
    # surrogateescape: a file name that is not UTF-8 is written back as its exact bytes (os.fsdecode)
    if callable(content):
        content(f)
    else:
        f.write(content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content)
    f.flush()


def with_path(exc: OSError, path: str | Path) -> OSError:
    """``exc`` with ``path`` as its file name when it names none (a full disk says only "No space left")."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def csv_cell(text: str) -> str:
    """A CSV cell that no spreadsheet runs as a formula: text starting with ``= + - @``, a tab or a carriage
    return gets a leading ``'`` (OWASP's advice for CSV injection). The JSON output keeps the exact names."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
