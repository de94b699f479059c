"""Fetching the photo sources: pinned Debian packages (``apt-get download`` + ``dpkg-deb -x`` into a cache
folder; nothing is installed system-wide), their extra unpack steps, or a local folder."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from samespace.devsets import photo_sources, qt_resources

log = logging.getLogger("samespace.real_photos")

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "samespace" / "real-photos"
UNPACK_FORMAT = 2  # bump when an unpack step changes, so cached unpacked packages are redone


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


def photo_folder(source: photo_sources.Source, cache_dir: str | Path = DEFAULT_CACHE, kept: str = "photos") -> Path:
    """Where the photos of a ``deb`` source are kept in the cache (``.complete`` in it once fetched).

    ``kept`` names the cache's folder of kept photos: each set that lists its own photos of a package keeps them in
    its own folder (``photos`` for the real-photo set), so that building one set never re-extracts the other's.
    """
    safe_version = re.sub(r"[^A-Za-z0-9.+~-]", "_", source.version)
    return Path(cache_dir) / kept / f"{source.package}_{safe_version}"


def _deb_file(folder: Path, package: str, version: str) -> Path | None:
    for deb in sorted(folder.glob(f"{package}_*.deb")):
        result = run_tool(["dpkg-deb", "-f", str(deb), "Version"])
        if result.returncode == 0 and result.stdout.strip() == version:
            return deb
    return None


def fetch(source: photo_sources.Source, cache_dir: str | Path = DEFAULT_CACHE, kept: str = "photos") -> Path:
    """The folder holding the source's files: a ``dir`` source's path, or the unpacked pinned ``.deb``.

    The ``.deb`` is downloaded once into ``<cache>/debs`` with ``apt-get download PACKAGE=VERSION`` (no
    root needed, nothing installed) and unpacked with ``dpkg-deb -x``. Only the photos the source lists and
    the package's copyright file are kept in ``<cache>/<kept>`` (the unpacked packages would take 1.4 GB),
    through a staging folder so that a failure leaves nothing half-written. When the list of photos changes,
    the kept files are taken again from the cached ``.deb``.
    """
    if source.kind == "dir":
        root = Path(source.package)
        if not root.is_dir():
            raise photo_sources.RealPhotosError(f"{root}: source folder of {source.name!r} not found")
        return root
    if source.kind != "deb":
        raise photo_sources.RealPhotosError(f"{source.name}: unknown source kind {source.kind!r}")
    if source.unpack and source.unpack not in UNPACKERS:
        raise photo_sources.RealPhotosError(f"{source.name}: unknown unpack step {source.unpack!r}")
    cache_dir = Path(cache_dir)
    target = photo_folder(source, cache_dir, kept)
    needed = sorted({shot for place in source.places for shot in place.shots})
    stamp = f"{source.package}={source.version} unpack={UNPACK_FORMAT}\n" + "".join(f"{n}\n" for n in needed)
    if (target / ".complete").is_file() and (target / ".complete").read_text() == stamp:
        return target
    debs = cache_dir / "debs"
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
    staging = target.with_name(target.name + ".partial")
    unpacked = target.with_name(target.name + ".unpacked")
    for folder in (staging, unpacked):
        if folder.exists():
            shutil.rmtree(folder)
    staging.mkdir(parents=True)
    unpacked.mkdir()
    try:
        result = run_tool(["dpkg-deb", "-x", str(deb), str(unpacked)])
        if result.returncode != 0:
            raise photo_sources.RealPhotosError(f"{deb}: cannot unpack ({result.stderr.strip()})")
        if source.unpack:
            UNPACKERS[source.unpack](unpacked, unpacked)
        keep = needed + [p.relative_to(unpacked).as_posix() for p in unpacked.glob("usr/share/doc/*/copyright")]
        keep += [p.relative_to(unpacked).as_posix() for p in unpacked.glob("rcc/**/README")]  # per-photo credits
        for name in keep:
            if (unpacked / name).is_file():  # a listed photo that is missing is reported by build()
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(unpacked / name, staging / name)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    (staging / ".complete").write_text(stamp)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target
