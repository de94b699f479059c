"""Hostile output locations and overlapping inputs: every file the project writes goes through one safety path.

No photo, device node, symbolic link or input file changes (checksums); a refused location is one ``error:`` line
with exit status 2 before any work; ``/dev/stdout`` into a pipe is written, never opened for reading.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samespace import embedding_store, labelling, outputs
from samespace.commands import embed, find

REPO = Path(__file__).resolve().parent.parent
FAST = ["--method", "phash", "--no-progress"]


@pytest.fixture()
def photos(tmp_path: Path, test_dir: Path) -> Path:
    """Four sample photos (two of one room) in a folder of their own."""
    root = tmp_path / "photos"
    root.mkdir()
    for path in labelling.find_images(test_dir)[:4]:
        shutil.copyfile(path, root / path.name)
    return root


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], main=find.main) -> str:
    """Run a command that must refuse: exit status 2 and one line on stderr; returns that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _node(path: Path, like: str) -> Path:
    """A character device like ``like`` (/dev/null, /dev/full) at ``path``; skips where mknod is not allowed."""
    rdev = os.stat(like).st_rdev
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, rdev)
    except (PermissionError, OSError) as exc:
        pytest.skip(f"mknod not allowed here ({exc})")
    return path


# --------------------------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------------------------


def test_store_and_embed_output_never_write_over_a_photo(photos: Path, tmp_path: Path, capsys) -> None:
    outside = tmp_path / "elsewhere.jpg"  # a photo outside the scanned folder
    shutil.copyfile(next(photos.iterdir()), outside)
    renamed = tmp_path / "holiday.dat"  # a photo with a name that does not say so
    shutil.copyfile(next(photos.iterdir()), renamed)
    before, outside_before, renamed_before = _tree(photos), _digest(outside), _digest(renamed)
    inside = sorted(photos.iterdir())[0]
    assert "is one of the input photos" in _refused([str(photos), *FAST, "--store", str(inside)], capsys)
    for target in (outside, renamed):
        for extra in ([], ["--overwrite"]):
            line = _refused([str(photos), *FAST, "--store", str(target), *extra], capsys)
            assert f"--store {target}: is a photo; photos are never overwritten" in line
            line = _refused([str(photos), *FAST, "--json", str(target), *extra], capsys)
            assert "is a photo" in line
    for target in (inside, outside):
        line = _refused([str(photos), "--method", "phash", "--store", str(target)], capsys, embed.main)
        assert "--store" in line and ("photo" in line)
    assert _tree(photos) == before and _digest(outside) == outside_before and _digest(renamed) == renamed_before


# --------------------------------------------------------------------------------------------
# Devices, FIFOs, links
# --------------------------------------------------------------------------------------------


def test_a_device_node_is_never_replaced(photos: Path, tmp_path: Path, capsys) -> None:
    null, full = _node(tmp_path / "null", "/dev/null"), _node(tmp_path / "full", "/dev/full")
    for option, node in (("--json", null), ("--csv", null), ("--html", null), ("--store", full)):
        for extra in ([], ["--overwrite"]):
            line = _refused([str(photos), *FAST, option, str(node), *extra], capsys)
            assert f"{option} {node}: is a character device, not a regular file" in line
    line = _refused([str(photos), "--method", "phash", "--store", str(full)], capsys, embed.main)
    assert "is a character device" in line
    assert stat.S_ISCHR(os.lstat(null).st_mode) and stat.S_ISCHR(os.lstat(full).st_mode)


def test_a_fifo_output_is_refused_without_opening_it(photos: Path, tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)  # opening it for reading or writing would block: the check must not
    line = _refused([str(photos), *FAST, "--json", str(fifo)], capsys)
    assert "is a FIFO, not a regular file" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_output_is_refused_and_kept(photos: Path, tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    for name, points_to in (("store.npz", next(photos.iterdir())), ("report.json", notes)):
        link = tmp_path / name
        link.symlink_to(points_to)
        option = "--store" if name.endswith(".npz") else "--json"
        for extra in ([], ["--overwrite"]):
            line = _refused([str(photos), *FAST, option, str(link), *extra], capsys)
            assert "photo" in line or "is a symbolic link, not a regular file" in line
        assert link.is_symlink() and os.readlink(link) == str(points_to)
    assert notes.read_text() == "mine\n"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device"])
def test_the_writer_itself_refuses_special_paths(tmp_path: Path, kind: str) -> None:
    """outputs.atomic_write (every writer: reports, store, plots, feature cache, default model, manifests)."""
    target = tmp_path / "out"
    if kind == "symlink":
        (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff photo")
        target.symlink_to(tmp_path / "photo.jpg")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        _node(target, "/dev/null")
    mode = os.lstat(target).st_mode
    with pytest.raises(outputs.OutputError, match="not a regular file; not replaced"):
        outputs.atomic_write(target, "x")
    assert os.lstat(target).st_mode == mode and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", *(["photo.jpg"] if kind == "symlink" else [])])  # no temporary file left


def test_a_full_disk_names_the_file(tmp_path: Path, monkeypatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    target = tmp_path / "report.html"
    with pytest.raises(OSError, match=r"No space left on device: '.*report\.html'"):
        outputs.atomic_write(target, "<html>")
    assert list(tmp_path.iterdir()) == []  # neither the report nor a temporary file


# --------------------------------------------------------------------------------------------
# Files SameSpace did not write, and inputs
# --------------------------------------------------------------------------------------------


def test_store_over_a_foreign_file_needs_overwrite_and_json_cannot_share_the_store(photos: Path, tmp_path: Path,
                                                                                   capsys) -> None:
    document = tmp_path / "thesis.npz"
    document.write_bytes(b"PK\x03\x04 somebody's archive")
    line = _refused([str(photos), *FAST, "--store", str(document)], capsys)
    assert "exists and was not written by SameSpace; pass --overwrite" in line
    assert document.read_bytes() == b"PK\x03\x04 somebody's archive"
    store = tmp_path / "store.npz"
    assert find.main([str(photos), *FAST, "--store", str(store)]) == 0
    assert outputs.is_ours(store)  # a store SameSpace wrote is recognised: the next run needs no flag
    assert find.main([str(photos), *FAST, "--store", str(store)]) == 0
    capsys.readouterr()
    line = _refused([str(photos), *FAST, "--store", str(store), "--json", str(store)], capsys)
    assert "both name" in line
    assert find.main([str(photos), *FAST, "--store", str(document), "--overwrite"]) == 0
    assert outputs.is_ours(document)


def test_embeddings_never_rewrites_its_input(photos: Path, tmp_path: Path, capsys) -> None:
    store = tmp_path / "store.npz"
    assert find.main([str(photos), *FAST, "--store", str(store)]) == 0
    before, stat_before = _digest(store), os.stat(store)
    extra = tmp_path / "more"
    extra.mkdir()
    source = next(photos.iterdir())
    (extra / "new.jpg").write_bytes(source.read_bytes() + b"\0")  # a photo the store lacks
    out = tmp_path / "out.json"
    assert find.main([str(photos), str(extra), *FAST, "--embeddings", str(store), "--json", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["embedded"] == 1 and summary["images"] == 5
    assert _digest(store) == before and os.stat(store).st_mtime_ns == stat_before.st_mtime_ns
    line = _refused([str(photos), *FAST, "--embeddings", str(store), "--json", str(store), "--overwrite"], capsys)
    assert "input" in line
    assert _digest(store) == before


@pytest.mark.slow
def test_stdout_into_a_pipe_is_written_not_read(photos: Path) -> None:
    # One process (torch loads once) runs find_duplicates.py's main with each spelling of standard output.
    runs = ", ".join(f"find_duplicates.main([{str(photos)!r}, *{FAST!r}, '--no-cache', '--json', {name!r}])"
                     for name in ("/dev/stdout", "-"))
    run = subprocess.run([sys.executable, "-c", f"import sys, find_duplicates; sys.exit(max([{runs}]))"],
                         capture_output=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr.decode()
    decoder, text, documents = json.JSONDecoder(), run.stdout.decode(), []
    while text.strip():  # stdout holds the two documents alone; the summaries went to stderr
        document, end = decoder.raw_decode(text.lstrip())
        documents.append(document)
        text = text.lstrip()[end:]
    assert [d["summary"]["images"] for d in documents] == [4, 4]
    assert run.stderr.decode().count("4 images") == 2


def test_csv_cells_are_escaped_against_formula_injection(photos: Path, tmp_path: Path, monkeypatch) -> None:
    source = next(photos.iterdir())
    names = ["=HYPERLINK(1).jpg", "+1.jpg", "-2.jpg", "@SUM(1).jpg", "\tx.jpg", "plain.jpg"]
    for name in names:
        shutil.copyfile(source, photos / name)
    out = tmp_path / "pairs.csv"
    monkeypatch.chdir(photos)  # the folder given as "." makes each path the bare file name
    assert find.main([".", *FAST, "--no-cache", "--csv", str(out)]) == 0
    cells = {cell for row in list(csv.reader(io.StringIO(out.read_text())))[1:] for cell in row[1:3]}
    assert {"'" + name for name in names[:-1]} | {"plain.jpg"} <= cells
    assert not any(cell[:1] in "=+-@\t" for cell in cells)
    assert outputs.csv_cell("=1") == "'=1" and outputs.csv_cell("a=1") == "a=1" and outputs.csv_cell("") == ""


# --------------------------------------------------------------------------------------------
# --against with overlapping folders
# --------------------------------------------------------------------------------------------


def test_a_library_inside_the_photos_folder_counts_as_library(photos: Path, tmp_path: Path) -> None:
    library = photos / "library"
    library.mkdir()
    source = sorted(p for p in photos.iterdir() if p.is_file())[0]
    shutil.copyfile(source, library / "archived.jpg")  # byte-identical to a new photo
    out = tmp_path / "out.json"
    with pytest.warns(UserWarning, match=r"1 photos under .*library are also under a PHOTOS_DIR folder; they count "
                                         r"as library photos"):
        assert find.main([str(photos), "--against", str(library), *FAST, "--no-cache", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["summary"]["new_images"] == 4 and document["summary"]["library_images"] == 1
    assert [str(source), str(library / "archived.jpg"), 1.0, "identical"] in document["pairs"]


def test_photos_inside_a_library_folder_count_as_new(photos: Path, tmp_path: Path) -> None:
    new = photos / "incoming"
    new.mkdir()
    source = sorted(p for p in photos.iterdir() if p.is_file())[0]
    shutil.copyfile(source, new / "again.jpg")
    out = tmp_path / "out.json"
    with pytest.warns(UserWarning, match="1 photos under .*incoming are also under a --against folder; they count as "
                                         "new photos"):
        assert find.main([str(new), "--against", str(photos), *FAST, "--no-cache", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["summary"]["new_images"] == 1 and document["summary"]["library_images"] == 4
    assert [str(new / "again.jpg"), str(source), 1.0, "identical"] in document["pairs"]


def test_the_same_folder_on_both_sides_is_refused(photos: Path, capsys) -> None:
    line = _refused([str(photos), "--against", str(photos) + "/", *FAST, "--no-cache"], capsys)
    assert "is given both as PHOTOS_DIR and with --against" in line


# --------------------------------------------------------------------------------------------
# embed.py's own options
# --------------------------------------------------------------------------------------------


def test_embed_output_folder_file_parent_and_batch_size_are_one_line(photos: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert "is a folder, expected a file name" in _refused(
        [str(photos), "--method", "phash", "--store", str(folder)], capsys, embed.main)
    assert list(folder.iterdir()) == []  # no part file left behind
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "is not a folder" in _refused(
        [str(photos), "--method", "phash", "--store", str(a_file / "s.npz")], capsys, embed.main)
    with pytest.raises(SystemExit) as exit_info:
        embed.main([str(photos), "--method", "phash", "--store", str(tmp_path / "s.npz"), "--batch-size", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size must be positive" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder", "photos"]


def test_embed_writes_a_store_and_refuses_a_foreign_file(photos: Path, tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "mine.npz"
    foreign.write_bytes(np.arange(3).tobytes())
    assert "exists and was not written by SameSpace" in _refused(
        [str(photos), "--method", "phash", "--store", str(foreign)], capsys, embed.main)
    assert foreign.read_bytes() == np.arange(3).tobytes()
    store = tmp_path / "s.npz"
    assert embed.main([str(photos), "--method", "phash", "--store", str(store)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert outputs.is_ours(store) and names == [embedding_store.LOCK_NAME, "mine.npz", "photos", "s.npz"]


def test_a_store_row_whose_photo_became_a_fifo_never_blocks_the_report(photos: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.npz"
    assert find.main([str(photos), *FAST, "--store", str(store)]) == 0
    victim = sorted(photos.iterdir())[0]
    victim.unlink()
    os.mkfifo(victim)  # opening it for reading would wait for a writer forever
    page = tmp_path / "r.html"
    run = subprocess.run([sys.executable, str(REPO / "find_duplicates.py"), "--embeddings", str(store), *FAST,
                          "--html", str(page)], capture_output=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr.decode()
    assert "3 images" in run.stdout.decode() and page.stat().st_size > 0  # the FIFO is not the photo embedded
    assert "1 photo left out, edited since the store embedded it" in run.stderr.decode()
    assert stat.S_ISFIFO(os.lstat(victim).st_mode)
