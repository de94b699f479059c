"""Act on what ``samespace find --json`` found: plan and do moving, trashing or linking the duplicates.

The result file is untrusted input (:func:`load_result`): size cap, types, and every photo it names must lie
under a folder its summary lists. A file whose bytes are not those find read (the content key each group
records per member; a photo replaced, or the result used from another folder) is refused, and so is one of a
group whose keeper is. A plan keeps one photo per group (keepers.py) and records, per file acted on, its size,
modification time and sha256 as found on disk; applying re-checks them and refuses, one line each, a file that
changed. Nothing is ever deleted: a moved file goes to the ``--move-to`` folder, a file
replaced by a link goes to an undo folder first, and a file is moved by a hard link then an unlink (or an
exclusive-create copy across file systems), so an existing file is never overwritten. ``--trash`` hands the file
to the system trash (samespace.trash) and records where it went when the trash can be read back. Every applied
step is recorded in an undo manifest (written through outputs.atomic_write after each step), which
samespace.undoing replays.
Library photos (``find --against``) and keepers are never acted on. A choices file exported from the review page
(samespace.choices) names exactly the photos to act on instead of the keeper rule.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from samespace import content_keys, hashing, interrupts, keepers, outputs, photo_files, trash

MAX_RESULT_BYTES = 256 * 2**20  # a JSON result of a few million pairs; larger is refused unread
MAX_MANIFEST_BYTES = 256 * 2**20
ACTIONS = ("move", "hardlink", "symlink", "trash")
MANIFEST_FORMAT = "samespace-undo"
MAX_SUFFIX = 1000  # "name (1).jpg" ... before a name clash in the destination is refused


class ActError(ValueError):
    """A result file, manifest or option that cannot be acted on: one line naming it."""


@dataclass
class Document:
    """The parts of a find result that acting needs: groups of paths, scanned folders, library folders."""

    path: Path
    groups: list[list[str]]
    folders: list[str]
    library: list[str]
    mtime_ns: int
    keys: dict[str, str] = field(default_factory=dict)  # member -> its content key when find ran (where recorded)


def read_capped(path: Path, cap: int, what: str) -> bytes:
    """The bytes of the regular file ``path`` (never a FIFO or device), refusing one larger than ``cap``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ActError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # checked before fdopen, which refuses a folder itself
        os.close(fd)
        raise ActError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ActError(f"{path}: larger than {cap:,} bytes; not a {what} this command reads")
    return data


def parse_json(path: Path, data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ActError(f"{path}: not a {what} (not UTF-8)") from exc
    except json.JSONDecodeError as exc:
        raise ActError(f"{path}: not a {what} (not JSON: line {exc.lineno}: {exc.msg})") from exc
    except RecursionError as exc:  # deeply nested arrays
        raise ActError(f"{path}: not a {what} (nested too deeply)") from exc


def path_strings(value: Any, where: str, path: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v and "\x00" not in v for v in value):
        raise ActError(f"{path}: {where} must be a list of non-empty path strings")
    return value


def is_under(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` lies in ``folder``: lexically (``..`` resolved) and with the folders' links resolved."""
    plain, top = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    real = Path(os.path.realpath(plain.parent)) / plain.name  # the file's own link is not followed
    return plain.is_relative_to(top) and real.is_relative_to(os.path.realpath(top))


def load_result(path: str | Path, cap: int | None = None) -> Document:
    """Read and validate a ``samespace find --json`` result; ActError (one line naming the file) on any problem.

    Relative paths are taken as written, relative to the current folder, like ``find`` wrote them.
    """
    path = Path(path)
    data = read_capped(path, MAX_RESULT_BYTES if cap is None else cap, "SameSpace result")
    doc = parse_json(path, data, "SameSpace result")
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list) or not isinstance(doc.get("summary"),
                                                                                              dict):
        raise ActError(f"{path}: not a SameSpace result (expected an object with groups and summary)")
    summary = doc["summary"]
    folders = path_strings(summary.get("folders"), "summary.folders", path)
    library = path_strings(summary.get("against", []), "summary.against", path)
    if not folders:
        raise ActError(f"{path}: summary.folders lists no folder")
    groups: list[list[str]] = []
    keys: dict[str, str] = {}
    images = photo_files.readable_extensions()
    for k, group in enumerate(doc["groups"]):
        if not isinstance(group, dict):
            raise ActError(f"{path}: groups[{k}] must be an object")
        members = path_strings(group.get("members"), f"groups[{k}].members", path)
        if len(set(members)) != len(members):
            raise ActError(f"{path}: groups[{k}] lists a photo twice")
        for member in members:
            if not any(is_under(member, f) for f in [*folders, *library]):
                raise ActError(f"{path}: groups[{k}]: {outputs.printable_name(member)} is not under the scanned "
                               "folders of summary.folders / summary.against")
            if Path(member).suffix.lower() not in images:  # find lists only images: never a document or a key
                raise ActError(f"{path}: groups[{k}]: {outputs.printable_name(member)} is not an image file name")
        keys.update(_member_keys(group, members, f"groups[{k}].keys", path))
        groups.append(members)
    return Document(path, groups, folders, library, os.stat(path).st_mtime_ns, keys)


def _member_keys(group: dict[str, Any], members: list[str], where: str, path: Path) -> dict[str, str]:
    """A group's recorded content keys (``keys``: one per member, null where find could not read it); an older
    result without them gives none, and the modification-time check alone applies."""
    keys = group.get("keys")
    if keys is None:
        return {}
    if not isinstance(keys, list) or len(keys) != len(members) or not all(
            k is None or (isinstance(k, str) and len(k) == 2 * content_keys.KEY_BYTES and k.isascii()
                          and all(c in "0123456789abcdef" for c in k)) for k in keys):
        raise ActError(f"{path}: {where} must list one content key (32 hex digits) or null per member")
    return {m: k for m, k in zip(members, keys, strict=True) if k is not None}


def sha256_of(path: str | Path) -> str:
    """The sha256 of a regular file's bytes (a link is not followed: OSError)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with os.fdopen(fd, "rb") as f:
        return hashing.file_digest(f, hashlib.sha256())


@dataclass
class Step:
    """One file to act on, with what it was at planning time (the check before acting)."""

    action: str
    path: str
    keeper: str
    reason: str
    folder: str  # the scanned folder it lies under: --move-to keeps the path relative to it
    size: int
    mtime_ns: int
    sha256: str
    keeper_sha256: str


@dataclass
class Plan:
    """The steps of a run, the lines of files refused while planning, and counts for the summary line."""

    steps: list[Step] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    groups: int = 0
    not_identical: int = 0
    library: int = 0


def _refusal(path: str, why: str) -> str:
    return f"{outputs.printable_name(path)}: {why}; left alone"


def make_plan(doc: Document, action: str, rule: str = keepers.DEFAULT_RULE, prefer: Sequence[str | Path] = (),
              only_identical: bool = False, chosen: set[str] | None = None) -> Plan:
    """Per group, the keeper and a step for every other photo that may be acted on (see the module docstring).

    ``only_identical``: each group is split into its sets of byte-identical photos, each set with its keeper.
    ``chosen`` (choices.load_choices): act on exactly these photos; every other photo is kept, and the keeper
    rule picks among them the one a link points to."""
    if action not in ACTIONS:
        raise ActError(f"unknown action {action!r}")
    if chosen is not None and only_identical:
        raise ActError("--choices names the photos to act on; it cannot be combined with --only")
    plan = Plan()
    hashes: dict[str, str] = {}

    def digest(p: str) -> str:
        if p not in hashes:
            hashes[p] = sha256_of(p)
        return hashes[p]

    picked: list[tuple[keepers.Choice, list[keepers.Facts]]] = []
    for members in doc.groups:
        facts = []
        for member in members:
            try:
                if not stat.S_ISREG(os.lstat(member).st_mode):  # a link is never kept nor acted on: it could
                    plan.refused.append(_refusal(member, "not a regular file (a link or a device)"))  # dangle
                    continue
                facts.append(keepers.read_facts(member))
            except OSError as exc:
                plan.refused.append(_refusal(member, f"cannot read ({exc.strerror or exc})"))
        if chosen is not None:
            _choose(facts, chosen, rule, prefer, doc, plan, picked)
            continue
        for subgroup in _identical_sets(facts, digest, plan) if only_identical else [facts]:
            if len(subgroup) >= 2:
                picked.append((keepers.choose_keeper(subgroup, rule, prefer, doc.library), subgroup))
    kept = {os.path.abspath(choice.keeper.path) for choice, _ in picked}
    if chosen is not None:  # every photo not chosen is kept, whichever one a link points to
        kept |= {os.path.abspath(m) for members in doc.groups for m in members if m not in chosen}
    planned: set[str] = set()
    for choice, facts in picked:
        plan.groups += 1
        keeper = choice.keeper.path
        for f in facts:
            where = os.path.abspath(f.path)
            if where in kept or where in planned:  # a keeper of any group, or already planned
                continue
            if any(is_under(f.path, lib) for lib in doc.library):
                plan.library += 1
                continue
            why = _why_not(f, keeper, doc, action, digest)
            if why:
                plan.refused.append(_refusal(f.path, why))
            else:
                folder = max((d for d in doc.folders if is_under(f.path, d)), key=lambda d: len(Path(d).parts))
                plan.steps.append(Step(action, f.path, keeper, choice.reason, folder, f.size, f.mtime_ns,
                                       digest(f.path), digest(keeper)))
                planned.add(where)
    return plan


def _choose(facts: list[keepers.Facts], chosen: set[str], rule: str, prefer: Sequence[str | Path], doc: Document,
            plan: Plan, picked: list[tuple[keepers.Choice, list[keepers.Facts]]]) -> None:
    """One group under a choices file: the chosen photos are acted on, the keeper is picked among the others
    that can be read; with none readable, the chosen ones are refused (never the group's last copy)."""
    acting = [f for f in facts if f.path in chosen]
    staying = [f for f in facts if f.path not in chosen]
    if not acting:
        return
    if not staying:
        plan.refused += [_refusal(f.path, "no photo of its group that stays can be read") for f in acting]
        return
    keeper = keepers.choose_keeper(staying, rule, prefer, doc.library).keeper
    picked.append((keepers.Choice(keeper, "chosen on the review page"), [keeper, *acting]))


def _identical_sets(facts: list[keepers.Facts], digest: Callable[[str], str], plan: Plan) -> list[list[keepers.Facts]]:
    """A group split into its sets of byte-identical photos (sha256); photos with no copy are counted."""
    sets: dict[str, list[keepers.Facts]] = {}
    for f in facts:
        try:
            sets.setdefault(digest(f.path), []).append(f)
        except OSError as exc:
            plan.refused.append(_refusal(f.path, f"cannot read ({exc.strerror or exc})"))
    plan.not_identical += sum(1 for same in sets.values() if len(same) == 1)
    return list(sets.values())


def _why_not(f: keepers.Facts, keeper: str, doc: Document, action: str, digest: Callable[[str], str]) -> str | None:
    """Why ``f`` must not be acted on (None: it may), checked on the file as it is now."""
    try:
        st, keeper_st = os.lstat(f.path), os.stat(keeper)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file (a link or a device)"
        if st.st_mtime_ns > doc.mtime_ns:
            return f"modified after {doc.path.name} was written (run find again)"
        stale = f"holds other bytes than when {doc.path.name} was written (run find again)"
        if _stale(f.path, doc):
            return stale
        if _stale(keeper, doc):
            return f"its keeper {outputs.printable_name(keeper)} {stale}"
        if action == "hardlink" and st.st_dev != keeper_st.st_dev:
            return "on another file system than its keeper (a hard link cannot cross); use --symlink"
        if (st.st_dev, st.st_ino) == (keeper_st.st_dev, keeper_st.st_ino):
            return "already a hard link to its keeper"
        digest(f.path)
        digest(keeper)
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    return None


def _stale(path: str, doc: Document) -> bool:
    """Whether ``path`` now holds other bytes than find recorded (False where it recorded none)."""
    recorded = doc.keys.get(path)
    return recorded is not None and content_keys.content_key(path) != recorded


def changed(step: Step) -> str | None:
    """Why the file (or, for a link, its keeper) is not what the plan recorded; None when unchanged."""
    try:
        st = os.lstat(step.path)
        if not stat.S_ISREG(st.st_mode):
            return "is no longer a regular file"
        if (st.st_size, st.st_mtime_ns) != (step.size, step.mtime_ns) or sha256_of(step.path) != step.sha256:
            return "changed since the plan was made"
        if step.action != "move" and sha256_of(step.keeper) != step.keeper_sha256:
            return f"its keeper {outputs.printable_name(step.keeper)} changed since the plan was made"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    return None


def move_file(src: str | Path, dst: str | Path, expected_sha256: str) -> None:
    """Move ``src`` to ``dst``, never replacing an existing ``dst`` (FileExistsError).

    A hard link then an unlink keeps the very inode (same file system); else an exclusive-create copy whose
    bytes are checked against ``expected_sha256`` before the source is removed.
    """
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # another file system, or one without hard links: copy
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            shutil.copystat(src, dst)
            if sha256_of(dst) != expected_sha256:
                raise OSError(errno.EIO, "the copy differs from the source", str(dst)) from None
        except BaseException:
            os.unlink(dst)
            raise
    os.unlink(src)


def _free_name(dst: Path) -> list[Path]:
    """``dst``, then ``name (1).ext`` ... ``name (MAX_SUFFIX).ext``: names to try, in order."""
    return [dst] + [dst.with_name(f"{dst.stem} ({n}){dst.suffix}") for n in range(1, MAX_SUFFIX + 1)]


def _move_into(src: str, folder: Path, relative: Path, sha: str) -> Path:
    """Move ``src`` to ``folder/relative`` (a free numbered name on a clash); the path it went to."""
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if not Path(os.path.realpath(target.parent)).is_relative_to(os.path.realpath(folder)):
        raise OSError(errno.EXDEV, "a link inside the destination leads out of it", str(target.parent))
    for candidate in _free_name(target):
        try:
            move_file(src, candidate, sha)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"{MAX_SUFFIX} numbered names taken", str(target))


@dataclass
class Manifest:
    """The undo manifest of one applied run, rewritten (atomically) after each step."""

    path: Path
    result: str
    action: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    def write(self) -> None:
        """Write the manifest through outputs.atomic_write."""
        doc = {"format": MANIFEST_FORMAT, "version": 1, "result": self.result, "action": self.action,
               "created": datetime.datetime.now().isoformat(timespec="seconds"), "steps": self.steps}
        outputs.atomic_write(self.path, json.dumps(doc, indent=1) + "\n")


def apply_plan(plan: Plan, manifest: Manifest, move_to: Path | None, undo_dir: Path,
               report: Callable[[str], None] = print) -> tuple[int, list[str]]:
    """Do each step whose file is unchanged; returns (steps done, refused lines). ``report`` gets a line per
    step done. The manifest is written before the first step and after each; an interrupt (Ctrl-C, SIGTERM)
    during a step acts once the step is recorded, so the manifest names every file moved."""
    refused: list[str] = []
    done = 0
    manifest.write()
    for step in plan.steps:
        why = changed(step)
        if why:
            refused.append(_refusal(step.path, why))
            continue
        with interrupts.deferred_interrupts():  # a step done is a step recorded: Ctrl-C waits for the manifest
            if step.action == "trash":
                line = _trash_step(step, manifest)
                if line.startswith("refused: "):
                    refused.append(line.removeprefix("refused: "))
                else:
                    done += 1
                    report(line)
                continue
            relative = Path(os.path.abspath(step.path)).relative_to(os.path.abspath(step.folder))
            try:
                went = _move_into(step.path, move_to if step.action == "move" else undo_dir, relative, step.sha256)
            except OSError as exc:
                refused.append(_refusal(step.path, f"cannot move ({exc.strerror or exc})"))
                continue
            record = {"original": os.path.abspath(step.path), "moved_to": os.path.abspath(went), "link": None,
                      "keeper": os.path.abspath(step.keeper), "sha256": step.sha256, "size": step.size}
            manifest.steps.append(record)
            manifest.write()  # recorded before linking: an interrupted run can still be undone
            if step.action != "move":
                try:
                    record["link_target"] = _link(step)
                except OSError as exc:  # put the file back: nothing is lost, nothing half done
                    move_file(went, step.path, step.sha256)
                    manifest.steps.pop()
                    manifest.write()
                    refused.append(_refusal(step.path, f"cannot link ({exc.strerror or exc})"))
                    continue
                record["link"] = step.action
                manifest.write()
            done += 1
            report(f"{step.action} {outputs.printable_name(step.path)} -> "
                   + (outputs.printable_name(str(went)) if step.action == "move"
                      else outputs.printable_name(step.keeper)))
    return done, refused


def _trash_step(step: Step, manifest: Manifest) -> str:
    """Send the step's file to the system trash and record where it went; the line to report, or a
    ``refused: `` line (the file is then left where it was)."""
    try:
        trash.send(step.path)
    except OSError as exc:
        return "refused: " + _refusal(step.path, f"cannot move it to the trash ({exc.strerror or exc})")
    entry = trash.find(os.path.abspath(step.path), step.size, step.sha256, sha256_of)
    manifest.steps.append({"original": os.path.abspath(step.path), "moved_to": entry.path if entry else None,
                           "trash_info": entry.info if entry else None, "trashed": True, "link": None,
                           "keeper": os.path.abspath(step.keeper), "sha256": step.sha256, "size": step.size})
    manifest.write()
    return f"trash {outputs.printable_name(step.path)} -> " + (
        outputs.printable_name(entry.path) if entry else "the system trash")


def _link(step: Step) -> str:
    """Put a link to the keeper at the step's path; the keeper's absolute path the link names."""
    target = os.path.realpath(step.keeper)
    if step.action == "hardlink":
        os.link(target, step.path)
    else:
        os.symlink(target, step.path)
    return target


def plan_dict(plan: Plan) -> list[dict[str, Any]]:
    """The steps as plain dictionaries (for a JSON listing of a dry run)."""
    return [asdict(s) for s in plan.steps]
