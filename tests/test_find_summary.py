"""samespace find's closing lines: the files written, the store saved and the photos skipped, before the summary."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samespace import result_formats
from samespace.commands import find

FAST = ["--method", "phash", "--no-cache", "--no-progress"]


def _photo(seed: int) -> Image.Image:
    """A small photo that is not blank (blank photos are set apart), different for each seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _truncated_jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    _photo(seed).save(buffer, "JPEG")
    return buffer.getvalue()[:300]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three readable photos, a text file named .jpg and a truncated JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(3):
        _photo(k).save(folder / f"photo{k}.png")
    (folder / "notes.jpg").write_text("not a photo\n")
    (folder / "cut.jpg").write_bytes(_truncated_jpeg(9))
    return folder


def _many_unreadable(tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(2):
        _photo(k).save(folder / f"photo{k}.png")
    for k in range(n):
        (folder / f"bad{k}.jpg").write_text("not a photo\n")
    return folder


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[list[str], list[str]]:
    assert find.main(list(argv)) == 0
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err.splitlines()


def test_json_and_html_written_are_named(photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    groups, page = tmp_path / "groups.json", tmp_path / "report.html"
    out, err = _run(capsys, str(photos), *FAST, "--json", str(groups), "--html", str(page))
    assert f"wrote {groups}" in out
    assert f"wrote {page} (HTML review page)" in out
    assert out.index(f"wrote {groups}") < out.index(f"wrote {page} (HTML review page)")
    assert out[-1].startswith("3 images, 2 skipped")  # the summary line stays last
    assert not any(line.startswith("store:") for line in out)  # --no-cache: no store saved
    assert err == []


def test_two_unreadable_files_are_counted_by_reason(photos: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = _run(capsys, str(photos), *FAST, "--json", str(tmp_path / "g.json"))
    counts = [line for line in out if line.startswith("skipped 2 files: ")]
    assert len(counts) == 1
    assert "1 not an image" in counts[0] and "1 truncated" in counts[0]
    listed = [line for line in out if line.startswith("skipped: ")]  # at most 5: each is listed
    assert listed == [
        f"skipped: {photos / 'cut.jpg'}: cannot read image (OSError: Truncated File Read)",
        f"skipped: {photos / 'notes.jpg'}: cannot read image (UnidentifiedImageError: cannot identify image file "
        f"'{photos / 'notes.jpg'}')",
    ]
    assert out.index(counts[0]) < out.index(listed[0]) < len(out) - 1


def test_plain_run_counts_the_skipped_files_once_listed(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = _run(capsys, str(photos), *FAST)
    assert sum(line.startswith("skipped ") and ".jpg:" in line for line in out) == 2  # the groups listing's lines
    assert not any(line.startswith("skipped: ") for line in out)  # not listed twice
    assert out[-2].startswith("skipped 2 files: ")
    assert out[-1].startswith("3 images, 2 skipped")
    assert err == []


def test_verbose_lists_every_skipped_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _many_unreadable(tmp_path, 7)
    out, _ = _run(capsys, str(folder), *FAST, "--json", str(tmp_path / "g.json"), "--verbose")
    assert "skipped 7 files: 7 not an image" in out
    listed = [line for line in out if line.startswith("skipped: ")]
    assert [line.split(": ")[1] for line in listed] == [str(folder / f"bad{k}.jpg") for k in range(7)]
    assert not any("more" in line for line in listed)


def test_without_verbose_five_are_listed_and_the_rest_counted(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = _many_unreadable(tmp_path, 8)
    out, _ = _run(capsys, str(folder), *FAST, "--csv", str(tmp_path / "pairs.csv"))
    assert f"wrote {tmp_path / 'pairs.csv'}" in out
    assert "skipped 8 files: 8 not an image" in out
    listed = [line for line in out if line.startswith("skipped: ")]
    assert [line.split(": ")[1] for line in listed[:5]] == [str(folder / f"bad{k}.jpg") for k in range(5)]
    assert len(listed) == 6 and "and 3 more" in listed[5]


def test_json_to_stdout_sends_the_lines_to_stderr(photos: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "report.html"
    out, err = _run(capsys, str(photos), *FAST, "--json", "-", "--html", str(page))
    document = json.loads("\n".join(out))  # stdout holds the document alone
    assert len(document["skipped"]) == 2
    assert f"wrote {page} (HTML review page)" in err
    assert not any(line.startswith("wrote -") for line in err)  # standard output is no file written
    assert any(line.startswith("skipped 2 files: ") for line in err)
    assert err[-1].startswith("3 images, 2 skipped")


def test_nothing_to_say_prints_nothing_more(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "clean"
    folder.mkdir()
    for k in range(3):
        _photo(k).save(folder / f"photo{k}.png")
    out, err = _run(capsys, str(folder), *FAST)
    assert out == [out[-1]] and out[-1].startswith("3 images, 0 skipped")
    assert err == []


def test_a_saved_store_is_named_with_its_photos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "clean"
    folder.mkdir()
    for k in range(3):
        _photo(k).save(folder / f"photo{k}.png")
    store = tmp_path / "store.npz"
    argv = [str(folder), "--method", "phash", "--no-progress", "--store", str(store)]
    out, _ = _run(capsys, *argv)
    assert out[-2:-1] == [f"store: {store} (3 photos)"]
    out, _ = _run(capsys, *argv)  # nothing new: the store is not written again, and not named
    assert not any(line.startswith("store:") for line in out)


def test_a_name_with_a_new_line_stays_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _many_unreadable(tmp_path, 0)
    (folder / "odd\nname.jpg").write_text("not a photo\n")
    out, _ = _run(capsys, str(folder), *FAST, "--json", str(tmp_path / "g.json"), "--verbose")
    listed = [line for line in out if line.startswith("skipped: ")]
    assert len(listed) == 1 and "odd\\nname.jpg" in listed[0]
    assert out[-1].startswith("2 images, 1 skipped")


def test_skip_kinds_and_counts() -> None:
    assert result_formats.skip_kind("cannot read image (OSError: image file is truncated (3 bytes not processed))") \
        == "truncated"
    assert result_formats.skip_kind("file too large (over 1 bytes)") == "too large"
    assert result_formats.skip_kind("not a regular file (FIFO)") == "not a regular file"
    assert result_formats.skip_kind("cannot read image (SyntaxError: broken PNG file)") == "cannot read image"
    skipped = [{"path": f"p{k}", "reason": r} for k, r in
               enumerate(["file too large (x)", "cannot read image (UnidentifiedImageError: y)",
                          "cannot read image (UnidentifiedImageError: z)"])]
    assert result_formats.skipped_count_line(skipped) == "skipped 3 files: 2 not an image, 1 too large"
    assert result_formats.skipped_count_line(skipped[:1]) == "skipped 1 file: 1 too large"
    assert result_formats.closing_lines([], None, []) == []
