"""find_duplicates.py on hostile folders: odd file names, blank photos,
unreadable folders, undecodable formats, bad thresholds; every error one line with exit status 2."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samespace import blank, decoding, errors, finder, labelling, outputs, pair_dataset, photo_files
from samespace import finder as fd
from samespace.commands import find


@pytest.fixture(scope="module")
def three(test_dir: Path) -> list[Path]:
    """Three sample photos: two of one room, one of another."""
    paths = labelling.find_images(test_dir)
    groups = labelling.group_ids(paths, test_dir)
    room = [p for p, g in zip(paths, groups, strict=True) if g == groups[0]][:2]
    other = next(p for p, g in zip(paths, groups, strict=True) if g != groups[0])
    return [*room, other]


def _uniform(path: Path, colour: tuple[int, int, int], seed: int, fmt: str = "JPEG") -> Path:
    """A flat photo: one colour plus faint sensor noise (std 1)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, np.float64) + rng.normal(0, 1, (240, 320, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, fmt, quality=90)
    return path


def test_odd_file_names_are_written_losslessly_and_listed_one_per_line(three: list[Path], tmp_path: Path,
                                                                       capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    raw_name = b"caf\xe9_\xff.jpg"  # Latin-1 bytes: not UTF-8
    shutil.copyfile(three[0], os.path.join(os.fsencode(photos), raw_name))
    shutil.copyfile(three[0], photos / "two\nlines.jpg")  # the same photo: one group of three
    shutil.copyfile(three[0], photos / "plain.jpg")
    out = tmp_path / "out"
    out.mkdir()
    args = [str(photos), "--method", "phash", "--no-progress"]
    assert find.main([*args, "--json", str(out / "d.json"), "--csv", str(out / "d.csv"), "--html",
                    str(out / "d.html")]) == 0
    capsys.readouterr()
    expected = {os.fsencode(photos) + b"/" + raw_name, os.fsencode(photos / "two\nlines.jpg"),
                os.fsencode(photos / "plain.jpg")}
    document = json.loads((out / "d.json").read_text())
    assert {os.fsencode(m) for m in document["groups"][0]["members"]} == expected  # exact bytes back
    rows = list(csv.reader(io.StringIO((out / "d.csv").read_bytes().decode("utf-8", "surrogateescape"))))
    assert {os.fsencode(p) for row in rows[1:] for p in row[1:3]} == expected
    page = (out / "d.html").read_bytes().decode("utf-8")  # the page stays valid UTF-8
    assert "caf\\xe9_\\xff.jpg" in page and "two\\nlines.jpg" in page

    assert find.main(args) == 0  # the plain-text listing: one line per photo, odd names quoted
    lines = capsys.readouterr().out.splitlines()
    members = lines[1:4]
    assert sorted(members) == sorted([f"  {photos}/plain.jpg", f"  '{photos}/two\\nlines.jpg'",
                                      f"  '{photos}/caf\\xe9_\\xff.jpg'"])


@pytest.mark.parametrize("value", ["nan", "2", "-1", "inf"])
def test_a_threshold_outside_the_score_range_is_refused(value: str, three: list[Path], capsys) -> None:
    assert find.main([str(three[0].parent), "--method", "phash", "--threshold", value, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--threshold {float(value):g}: expected a number in [0, 1] for phash scores" in err
    assert err.count("\n") == 1
    find.check_threshold(-0.5, "cosine")  # cosine scores go down to -1
    with pytest.raises(errors.FindDuplicatesError, match=r"\[-1, 1\] for cosine"):
        find.check_threshold(1.5, "cosine")


def test_blank_photos_are_their_own_category_for_every_method(three: list[Path], tmp_path: Path,
                                                               monkeypatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in three:
        shutil.copyfile(path, photos / path.name)
    colours = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 30), (20, 60, 200), (250, 248, 240)]
    for k, colour in enumerate(colours * 2):  # 12 flat photos of 6 colours, each different bytes
        _uniform(photos / f"flat_{k:02d}.jpg", colour, seed=k)
    _uniform(photos / "scan.png", (245, 245, 245), seed=99, fmt="PNG")
    shutil.copyfile(photos / "flat_00.jpg", photos / "flat_00_copy.jpg")  # byte-identical: still duplicates
    flat_names = {p.name for p in photos.iterdir() if p.name.startswith(("flat", "scan"))}
    assert blank.is_blank(np.stack([decoding.load_image(photos / n) for n in sorted(flat_names)])).all()
    assert not blank.is_blank(np.stack([decoding.load_image(p) for p in three])).any()

    monkeypatch.setattr(fd, "MAX_GROUP_SIZE", 1)  # every group is "too large": each gets one warning
    for method in ("phash", "whash", "cosine"):
        with pytest.warns(UserWarning, match=r"group \d has \d photos \(more than 1\)") as caught:
            scorer, threshold, _ = find.build_scorer(find.build_parser().parse_args([str(photos), "--method", method]),
                                                   "cpu")
            result = finder.find_duplicates([photos], scorer, threshold, progress=False).to_dict()
        assert len(caught) == len(result["groups"])
        assert {Path(p).name for p in result["blank"]} == flat_names, method
        assert result["summary"]["blank"] == len(flat_names) and result["summary"]["images"] == 3 + len(flat_names)
        blank_groups = [g for g in result["groups"] if any(Path(m).name in flat_names for m in g["members"])]
        assert [sorted(Path(m).name for m in g["members"]) for g in blank_groups] == [
            ["flat_00.jpg", "flat_00_copy.jpg"]], method
        assert blank_groups[0]["pairs"][0][2] == 1.0
        room = [g for g in result["groups"] if g not in blank_groups]
        assert [sorted(Path(m).name for m in g["members"]) for g in room] in ([], [sorted(p.name for p in three[:2])])


def test_unreadable_folders_and_undecodable_formats_are_listed_as_skipped(three: list[Path], tmp_path: Path,
                                                                          monkeypatch, capsys) -> None:
    photos = tmp_path / "photos"
    (photos / "locked").mkdir(parents=True)
    for path in three:
        shutil.copyfile(path, photos / path.name)
    shutil.copyfile(three[0], photos / "locked" / "hidden.jpg")
    (photos / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(100))
    real_scandir = os.scandir

    def scandir(path=".", *args, **kwargs):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)  # root can read any folder: simulate one it cannot
    assert find.main([str(photos), "--method", "phash", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"skipped {photos / 'locked'}: cannot list folder (Permission denied)" in captured.out
    if ".heic" not in photo_files.readable_extensions():
        assert f"skipped {photos / 'IMG_0001.HEIC'}: no decoder for .heic installed" in captured.out
    assert "3 images, 2 skipped" in captured.out.splitlines()[-1]

    dataset_split = tmp_path / "split"  # the training / evaluation readers list it too
    (dataset_split / "room").mkdir(parents=True)
    (dataset_split / "locked").mkdir()
    for k, path in enumerate(three[:2]):
        shutil.copyfile(path, dataset_split / "room" / f"boston_1_{k}.jpg")
    with pytest.warns(UserWarning, match="cannot list folder"):
        dataset = pair_dataset.DuplicateImageDataset(dataset_split, progress=False)
    assert dataset.skipped == [f"{dataset_split / 'locked'}: cannot list folder (Permission denied)"]


def test_warnings_and_errors_are_one_clean_line(three: list[Path], tmp_path: Path, monkeypatch, capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copyfile(three[0], photos / "a.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "empty").mkdir()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        # what Python prints outside pytest (which records warnings instead): the installed formatwarning
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    assert find.main([str(photos), str(tmp_path / "empty"), "--method", "phash", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"warning: {tmp_path / 'empty'}: no image files"]
    assert f"skipped {photos / 'broken.jpg'}: cannot read image" in captured.out
    monkeypatch.undo()

    def disk_full(path, content):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "atomic_write", disk_full)
    # --no-cache: monkeypatch.undo() also undid the private user cache (conftest), and the store is not the point
    assert find.main([str(photos), "--method", "phash", "--no-progress", "--no-cache", "--json",
                    str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: [Errno 28] No space left on device") and err.count("\n") == 1
    with pytest.raises(OSError):
        find.main([str(photos), "--method", "phash", "--no-progress", "--no-cache", "--json", str(tmp_path / "d.json"),
                 "--debug"])


@pytest.mark.parametrize("argv", [["--threshold", "abc"], ["--method", "md5"], ["--batch-size", "0"]])
def test_option_errors_are_one_line(argv: list[str], three: list[Path], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        find.main([str(three[0].parent), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert err.rstrip().endswith("(see find_duplicates.py --help)")
