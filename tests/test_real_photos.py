"""The real-photo set builder, on small generated source folders (no Debian package needed)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samespace import decoding, labelling
from samespace.devsets import builder, fetching, manifests, photo_sources, qt_resources, real_photos, reshooting

TRAIN, TEST = labelling.SPLITS


def _photo(rng: np.random.Generator, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A textured picture with a few blocks, different for every draw."""
    w, h = size
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
    arr = np.asarray(img).copy()
    for _ in range(4):
        x, y = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
        arr[y : y + 30, x : x + 30] = rng.integers(0, 256, size=3)
    return Image.fromarray(arr)


def _source_dir(root: Path, name: str, n_places: int, seed: int) -> tuple[Path, tuple[photo_sources.Place, ...]]:
    """A folder of generated photos: place k has k % 3 + 1 different shots (PNG, a JPEG and a greyscale)."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    places = []
    for k in range(n_places):
        shots = []
        for s in range(k % 3 + 1):
            file = f"place{k}/shot{s}" + (".png", ".jpg", ".pgm")[s % 3]
            (folder / file).parent.mkdir(exist_ok=True)
            img = _photo(rng)
            (img.convert("L") if file.endswith(".pgm") else img).save(folder / file)
            shots.append(file)
        places.append(photo_sources.Place(f"p{k}", tuple(shots), ("indoor", "objects")[k % 2]))
    return folder, tuple(places)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[photo_sources.Source]:
    root = tmp_path_factory.mktemp("sources")
    out = []
    for name, split, n, seed in (("alpha", TRAIN, 9, 1), ("beta", TRAIN, 6, 2), ("gamma", TEST, 8, 3)):
        folder, places = _source_dir(root, name, n, seed)
        out.append(photo_sources.Source(name, "dir", str(folder), "1", f"licence of {name}", split, places))
    return out


@pytest.fixture(scope="module")
def built(sources: list[photo_sources.Source], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("real") / "set"
    summary = builder.build(out, seed=0, sources=sources)
    return out, summary


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deterministic_for_a_seed(
    built: tuple[Path, dict], sources: list[photo_sources.Source], tmp_path: Path
) -> None:
    out, _ = built
    builder.build(tmp_path / "again", seed=0, sources=sources)
    assert _tree_hashes(tmp_path / "again") == _tree_hashes(out)
    builder.build(tmp_path / "other", seed=1, sources=sources)
    other = _tree_hashes(tmp_path / "other")
    assert other != _tree_hashes(out)


def test_layout_parses_into_the_intended_groups(built: tuple[Path, dict]) -> None:
    out, summary = built
    rows = manifests.read_manifest(out)
    all_sizes = []
    for split in labelling.SPLITS:
        split_dir = out / split
        paths = labelling.find_images(split_dir)
        assert all(labelling.parse_name(p.name) is not None for p in paths)
        by_path = {r["path"]: r for r in rows}
        intended = [by_path[f"{split}/{p.relative_to(split_dir).as_posix()}"]["group"] for p in paths]
        groups = labelling.group_ids(paths, split_dir)
        # Same partition: equal group ids exactly where the manifest's groups are equal.
        for i in range(len(paths)):
            for j in range(len(paths)):
                assert (groups[i] == groups[j]) == (intended[i] == intended[j])
        sizes = np.unique(groups, return_counts=True)[1]
        all_sizes += sizes.tolist()
        assert (sizes >= 2).sum() == summary[split]["groups"] and (sizes == 1).sum() == summary[split]["singletons"]
        assert len(paths) == summary[split]["images"]
        for path in paths:  # moderate JPEGs the one decode path reads
            with Image.open(path) as img:
                assert img.format == "JPEG" and max(img.size) <= reshooting.MAX_SIDE
            assert decoding.load_image(path).shape == (decoding.IMAGE_SIZE, decoding.IMAGE_SIZE, 3)
    assert min(all_sizes) == 1 and max(all_sizes) == builder.GROUP_SIZE[1]  # singletons, and groups of 2 to 4


def test_sources_are_disjoint_between_splits(built: tuple[Path, dict], sources: list[photo_sources.Source]) -> None:
    out, _ = built
    rows = manifests.read_manifest(out)
    train = {r["package"] for r in rows if r["split"] == TRAIN}
    test = {r["package"] for r in rows if r["split"] == TEST}
    assert len(train) == 2 and len(test) == 1 and not train & test
    both = [*sources, photo_sources.Source("delta", "dir", sources[0].package, "1", "x", TEST, sources[0].places)]
    with pytest.raises(photo_sources.RealPhotosError, match="feeds both"):
        builder.build(out.parent / "never", sources=both)
    assert not (out.parent / "never").exists()
    shipped = {}
    for source in photo_sources.SOURCES:  # the shipped list obeys the same rule and names no held-out package
        assert shipped.setdefault(source.package, source.split) == source.split
        assert source.name not in photo_sources.HELD_OUT and source.package not in photo_sources.HELD_OUT


def _check_params(params: dict[str, float]) -> None:
    assert set(params) <= {
        "perspective", "rotation", "crop_scale", "exposure_ev", "wb_red", "wb_blue", "contrast", "blur",
        "downscale", "jpeg_quality",
    }  # fmt: skip
    assert reshooting.JPEG_QUALITY[0] <= params["jpeg_quality"] <= reshooting.JPEG_QUALITY[1]
    ranges = {
        "perspective": (0, reshooting.PERSPECTIVE), "rotation": (-reshooting.ROTATION, reshooting.ROTATION),
        "crop_scale": reshooting.CROP_SCALE, "exposure_ev": (-reshooting.EXPOSURE_EV, reshooting.EXPOSURE_EV),
        "wb_red": (1 - reshooting.WHITE_BALANCE, 1 + reshooting.WHITE_BALANCE),
        "wb_blue": (1 - reshooting.WHITE_BALANCE, 1 + reshooting.WHITE_BALANCE), "contrast": reshooting.CONTRAST,
        "blur": reshooting.BLUR_RADIUS, "downscale": reshooting.DOWNSCALE,
    }  # fmt: skip
    for key, (low, high) in ranges.items():
        if key in params:
            assert low - 1e-3 <= params[key] <= high + 1e-3, (key, params[key])


def test_transforms_stay_within_their_documented_ranges(built: tuple[Path, dict]) -> None:
    out, _ = built
    transformed = [json.loads(r["transform"]) for r in manifests.read_manifest(out)]
    reshoots = [t for t in transformed if len(t) > 1]
    assert reshoots and all(t == {"jpeg_quality": builder.ORIGINAL_QUALITY} for t in transformed if len(t) == 1)
    rng = np.random.default_rng(0)
    photo = _photo(rng, (240, 180))
    seen: set[str] = set()
    for _ in range(150):
        img, quality, params = reshooting.reshoot(photo, rng)
        _check_params(params)
        seen |= set(params)
        assert quality == params["jpeg_quality"] and img.mode == "RGB" and max(img.size) <= 240
    assert len(seen) == 10  # every kind of transform happens
    for params in reshoots:
        _check_params(params)


def test_perspective_solvers_agree_with_opencv() -> None:
    """Both 4-point solvers (reshooting's PIL coefficients, views' homography) are OpenCV's getPerspectiveTransform
    in float64: they agree with it to its float32 inputs' rounding, and map the corners exactly."""
    import cv2

    from samespace import views

    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = rng.integers(200, 4000, 2)
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
        inward = np.abs(rng.uniform(-0.06, 0.06, (4, 2)) * [w, h]) * [[1, 1], [-1, 1], [-1, -1], [1, -1]]
        coefficients = np.array(reshooting.perspective_coefficients(corners + inward, corners))
        expected = cv2.getPerspectiveTransform(np.float32(corners), np.float32(corners + inward)).ravel()[:8]
        np.testing.assert_allclose(coefficients, expected, rtol=1e-5, atol=1e-4)
        a, b, c, d, e, f, g, k = coefficients  # PIL: output (x, y) reads input ((ax+by+c)/(gx+ky+1), ...)
        x, y = corners.T
        mapped = np.stack([(a * x + b * y + c), (d * x + e * y + f)], 1) / (g * x + k * y + 1)[:, None]
        np.testing.assert_allclose(mapped, corners + inward, atol=1e-9)
        frame = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
        target = frame * rng.uniform(0.5, 0.9) + rng.uniform(-0.1, 0.1, (4, 2))
        homography = views.four_point_homography(frame, target)
        np.testing.assert_allclose(homography, cv2.getPerspectiveTransform(np.float32(frame), np.float32(target)),
                                   atol=1e-6)
        projected = np.c_[frame, np.ones(4)] @ homography.T
        np.testing.assert_allclose(projected[:, :2] / projected[:, 2:], target, atol=1e-12)


def test_a_rotation_leaves_no_empty_corners() -> None:
    white = Image.new("RGB", (320, 240), (255, 255, 255))
    for degrees in (-25.0, 10.0, 25.0):
        arr = np.asarray(reshooting.rotated_crop(white, degrees))
        assert arr.min() >= 250, degrees  # the black fill of the rotation is cropped away


def test_manifest_is_complete(built: tuple[Path, dict], sources: list[photo_sources.Source]) -> None:
    out, _ = built
    rows = manifests.read_manifest(out)
    written = {p.relative_to(out).as_posix() for split in labelling.SPLITS for p in labelling.find_images(out / split)}
    assert {r["path"] for r in rows} == written
    folders = {s.name: Path(s.package) for s in sources}
    for row in rows:
        assert set(row) == set(manifests.MANIFEST_FIELDS) and all(row[k] for k in manifests.MANIFEST_FIELDS)
        assert hashlib.sha256((out / row["path"]).read_bytes()).hexdigest() == row["sha256"]
        original = folders[row["source"]] / row["original"]
        assert hashlib.sha256(original.read_bytes()).hexdigest() == row["source_sha256"]
        assert row["licence"] == f"licence of {row['source']}"
        assert row["shot"] == f"{row['source']}:{row['original']}"


def test_verify_finds_changed_missing_and_stray_files(
    built: tuple[Path, dict], sources: list[photo_sources.Source], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = built
    assert manifests.verify(out) == []
    assert real_photos.main(["verify", str(out)]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    paths = labelling.find_images(copy / TEST)
    paths[0].write_bytes(paths[0].read_bytes()[:-10])
    paths[1].unlink()
    (paths[2].parent / "stray_1_1.jpg").write_bytes(paths[2].read_bytes())
    problems = manifests.verify(copy)
    assert problems == [
        f"{paths[0]}: sha256 differs from the manifest",
        f"{paths[1]}: missing",
        f"{paths[2].parent / 'stray_1_1.jpg'}: not in the manifest",
    ]
    capsys.readouterr()
    assert real_photos.main(["verify", str(copy)]) == 2
    assert "3 file(s) differ from manifest.csv" in capsys.readouterr().err


def test_shot_ids_and_different_shot_pairs(built: tuple[Path, dict]) -> None:
    out, summary = built
    for split in labelling.SPLITS:
        split_dir = out / split
        paths = labelling.find_images(split_dir)
        groups = labelling.group_ids(paths, split_dir)
        shots = manifests.shot_ids(paths, split_dir)
        expected = {
            frozenset((paths[i].relative_to(split_dir).as_posix(), paths[j].relative_to(split_dir).as_posix()))
            for i in range(len(paths))
            for j in range(i + 1, len(paths))
            if groups[i] == groups[j] and shots[i] != shots[j]
        }
        pairs = manifests.different_shot_pairs(split_dir)
        assert pairs == expected and len(pairs) == summary[split]["different_shot_pairs"] > 0
        assert all(len(set(groups[shots == s])) == 1 for s in set(shots))  # a shot lies in one group
    with pytest.raises(photo_sources.RealPhotosError, match="not in"):
        manifests.shot_ids([out / TRAIN / "x" / "stray_1_1.jpg"], out / TRAIN)


@pytest.mark.parametrize("name", sorted(photo_sources.HELD_OUT))
def test_held_out_sources_are_refused(name: str, sources: list[photo_sources.Source], tmp_path: Path) -> None:
    with pytest.raises(photo_sources.RealPhotosError, match="held out"):
        photo_sources.sources_by_name([name])
    held = photo_sources.Source(name, "dir", sources[0].package, "1", "x", TEST, sources[0].places)
    with pytest.raises(photo_sources.RealPhotosError, match="held out"):
        builder.build(tmp_path / "set", sources=[held])
    assert not (tmp_path / "set").exists()


def test_cli_refuses_held_out_and_unknown_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build = ["--cache-dir", str(tmp_path), "build", str(tmp_path / "set"), "--sources"]
    assert real_photos.main([*build, "opencv-doc"]) == 2
    assert "opencv-doc: held out" in capsys.readouterr().err
    assert real_photos.main([*build, "nope"]) == 2
    assert "nope: unknown source" in capsys.readouterr().err
    assert not (tmp_path / "set").exists()


def test_a_missing_source_is_a_clear_error(sources: list[photo_sources.Source], tmp_path: Path) -> None:
    gone = photo_sources.Source("gone", "dir", str(tmp_path / "nowhere"), "1", "x", TEST, sources[2].places)
    with pytest.raises(photo_sources.RealPhotosError, match="nowhere: source folder of 'gone' not found"):
        builder.build(tmp_path / "set", sources=[sources[0], gone])
    missing = (photo_sources.Place("x", ("missing.jpg",), "a"),)
    partial = photo_sources.Source("gamma", "dir", sources[2].package, "1", "x", TEST, missing)
    with pytest.raises(photo_sources.RealPhotosError, match="missing.jpg: photo of source 'gamma' not found"):
        builder.build(tmp_path / "set", sources=[sources[0], partial])
    assert not (tmp_path / "set").exists()  # checked before anything is written


def test_an_existing_split_is_an_error(built: tuple[Path, dict], sources: list[photo_sources.Source]) -> None:
    out, _ = built
    before = _tree_hashes(out)
    with pytest.raises(photo_sources.RealPhotosError, match="already exists"):
        builder.build(out, sources=sources)
    assert _tree_hashes(out) == before


def test_offline_download_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def fake_run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 100, "", "E: Failed to fetch ... Temporary failure resolving")

    monkeypatch.setattr(fetching, "run_tool", fake_run)
    places = (photo_sources.Place("p", ("a.jpg",), "a"),)
    source = photo_sources.Source("pkg", "deb", "some-photos", "1.0-1", "x", TEST, places)
    error = r"cannot download some-photos=1.0-1 with apt-get \(E: Failed"
    with pytest.raises(photo_sources.RealPhotosError, match=error):
        fetching.fetch(source, tmp_path)
    assert ["apt-get", "download", "some-photos=1.0-1"] in calls


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")
def test_fetch_keeps_only_the_listed_photos_of_a_cached_deb(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN" / "control").write_text(
        "Package: samespace-test-photos\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test\n"
    )
    for name in ("a.png", "b.png"):
        (package / "usr/share/photos").mkdir(parents=True, exist_ok=True)
        _photo(np.random.default_rng(len(name))).save(package / "usr/share/photos" / name)
    (package / "usr/share/doc/samespace-test-photos").mkdir(parents=True)
    (package / "usr/share/doc/samespace-test-photos/copyright").write_text("License: CC0-1.0\n")
    (tmp_path / "cache" / "debs").mkdir(parents=True)
    deb = tmp_path / "cache" / "debs" / "samespace-test-photos_1.0-1_all.deb"
    build = ["dpkg-deb", "--root-owner-group", "--build", str(package), str(deb)]
    subprocess.run(build, check=True, capture_output=True)

    def source(*shots: str) -> photo_sources.Source:
        places = (photo_sources.Place("p", shots, "a"),)
        return photo_sources.Source("t", "deb", "samespace-test-photos", "1.0-1", "x", TEST, places)

    root = fetching.fetch(source("usr/share/photos/a.png"), tmp_path / "cache")  # the .deb is cached: no download
    kept = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert kept == [".complete", "usr/share/doc/samespace-test-photos/copyright", "usr/share/photos/a.png"]
    root = fetching.fetch(source("usr/share/photos/a.png", "usr/share/photos/b.png"), tmp_path / "cache")
    assert (root / "usr/share/photos/b.png").is_file()  # a longer list takes the files again from the .deb
    assert not list((tmp_path / "cache" / "photos").glob("*.partial")) + list(
        (tmp_path / "cache" / "photos").glob("*.unpacked")
    )


def _qt_resource_file(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A format-1 Qt resource file with one folder ``res`` holding ``files`` (name -> (bytes, compressed))."""
    names, payload = b"", b""

    def add_name(name: str) -> int:
        nonlocal names
        offset = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        return offset

    entries = [struct.pack(">IHII", 0, 2, 1, 1), struct.pack(">IHII", add_name("res"), 2, len(files), 2)]
    for name, (blob, compressed) in sorted(files.items()):
        stored = struct.pack(">I", len(blob)) + zlib.compress(blob) if compressed else blob
        entries.append(struct.pack(">IHHHI", add_name(name), int(compressed), 0, 0, len(payload)))
        payload += struct.pack(">I", len(stored)) + stored
    tree = b"".join(entries)
    header = 20
    return b"qres" + struct.pack(">IIII", 1, header, header + len(tree), header + len(tree) + len(payload)) + (
        tree + payload + names
    )


def test_qt_resource_reader(tmp_path: Path) -> None:
    files = {"a.webp": (b"plain bytes", False), "b.jpg": (bytes(range(256)) * 8, True)}
    (tmp_path / "x.rcc").write_bytes(_qt_resource_file(files))
    assert dict(qt_resources.read_bundle(tmp_path / "x.rcc")) == {f"/res/{k}": v[0] for k, v in files.items()}
    (tmp_path / "bad.rcc").write_bytes(b"nope")
    with pytest.raises(photo_sources.RealPhotosError, match="not a Qt resource file"):
        list(qt_resources.read_bundle(tmp_path / "bad.rcc"))


def test_readme_credits(tmp_path: Path) -> None:
    (tmp_path / "README").write_text(
        "Copyright: A. Person\nSource: https://example.org/a\nLicense: CC0-1.0\nFiles:\nfish1.webp\n\n"
        "Copyright: B\nLicense: CC-BY-SA 4.0\nFiles: usa/x.webp\n\n"
        "Copyright: C\nLicense: Public Domain\ntool.webp\nComment: no Files line upstream\n"
    )
    credits = photo_sources.readme_credits(tmp_path / "README")
    assert credits == {
        "fish1.webp": "CC0-1.0, A. Person, https://example.org/a",
        "usa/x.webp": "CC-BY-SA 4.0, B",
        "tool.webp": "Public Domain, C, no Files line upstream",
    }


def test_shipped_sources_use_each_photo_and_place_name_once() -> None:
    # A photo listed twice would be written as two places (a duplicate labelled as a non-duplicate), and place
    # names key each place's random transforms.
    for source in photo_sources.SOURCES:
        shots = [shot for place in source.places for shot in place.shots]
        names = [place.name for place in source.places]
        assert len(shots) == len(set(shots)), source.name
        assert len(names) == len(set(names)), source.name
        assert {place.category for place in source.places} <= {
            "animals", "buildings", "indoor", "landscapes", "objects", "people",
        }  # fmt: skip


def test_calibration_sources_keep_todays_test_data() -> None:
    # The calibration set (README, "Default thresholds") differs from today's only in its Training Data.
    names = {source.name: source for source in photo_sources.SOURCES}
    assert set(photo_sources.CALIBRATION_SOURCES) <= set(names)
    assert {n for n, s in names.items() if s.split == TEST} <= set(photo_sources.CALIBRATION_SOURCES)
    calibration = list(photo_sources.CALIBRATION_SOURCES)
    assert [s.name for s in photo_sources.sources_by_name(calibration)] == calibration


def _plain_sources() -> list[dict]:
    """The shipped sources as plain values; each photo's licence as looked up without its package's files."""
    nowhere = Path("/nonexistent-root")
    return [
        {
            "name": s.name, "kind": s.kind, "package": s.package, "version": s.version, "licence": s.licence,
            "split": s.split, "note": s.note, "unpack": s.unpack, "photo_licence": s.photo_licence,
            "places": [[p.name, list(p.shots), p.category] for p in s.places],
            "shot_licences": {shot: s.licence_of(nowhere, shot) for p in s.places for shot in p.shots},
        }  # fmt: skip
        for s in photo_sources.SOURCES
    ]


def test_the_source_tables_read_from_the_data_file_are_the_pinned_ones() -> None:
    # Pinned when the tables moved from Python to photo_sources.yaml: a change to a package, version, licence,
    # place name or photo path changes the built set, so it must be deliberate (and this digest updated).
    plain = _plain_sources()
    counts = {s["name"]: (len(s["places"]), sum(len(p[1]) for p in s["places"])) for s in plain}
    assert counts == {
        "gcompris-qt-data": (198, 207), "python3-sklearn": (2, 2), "scratch": (51, 53), "tuxpaint-data": (19, 19),
        "forensics-samples-files": (6, 6), "scribus-template": (4, 5), "gimp-help-en": (11, 11),
        "visp-images-data": (6, 17), "stellarium-data": (5, 10), "libjxl-testdata": (5, 5),
        "python3-skimage": (7, 8), "kphotoalbum": (18, 23), "kodi-data": (2, 2), "enlightenment-data": (14, 14),
    }  # fmt: skip
    text = json.dumps(plain, sort_keys=True, ensure_ascii=True)
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "c4bb80a51d3abc893dfcd15e2d8d9ccaa868b69d75cc5583de421cf2d12585f2"
    )


def test_named_steps_of_the_sources_exist() -> None:
    for source in photo_sources.SOURCES:
        assert not source.unpack or source.unpack in fetching.UNPACKERS, source.name
        assert not source.photo_licence or source.photo_licence in photo_sources.PHOTO_LICENCES, source.name
    assert photo_sources.SOURCE_TABLES.is_file()
