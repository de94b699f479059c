"""act and undo: a dry run refuses what --apply refuses, counts read right, undo tidies its folder, and a result
of ``find --embeddings`` can be acted on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_actions import checksums, run_find, write_scene

from samespace.commands import act, find, undo


@pytest.fixture()
def scene(tmp_path: Path) -> tuple[Path, Path]:
    """(photos folder, result JSON of find over it)."""
    photos = tmp_path / "photos"
    write_scene(photos)
    return photos, run_find(tmp_path / "result.json", photos)


@pytest.mark.parametrize("apply", [[], ["--apply"]])
def test_a_move_to_inside_the_scanned_folder_is_refused_by_the_dry_run_too(
        scene: tuple[Path, Path], tmp_path: Path, apply: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    before = checksums(tmp_path)
    inside = photos / "dups"
    assert act.main([str(result), "--move-to", str(inside), *apply]) == 2
    assert capsys.readouterr() == ("", f"error: --move-to {inside}: is inside the scanned folder {photos}; choose a "
                                       "folder outside it\n")
    assert checksums(tmp_path) == before and not inside.exists()


def test_done_counts_one_file_in_the_singular(scene: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, result = scene
    assert act.main([str(result), "--move-to", str(tmp_path / "dups"), "--only", "identical", "--apply"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("done: 1 file (1 group, 1 file to move, 3 not identical left); undo with: ")


@pytest.mark.parametrize("how", ["--hardlink", "--symlink"])
def test_a_complete_undo_removes_the_undo_folder_it_emptied(scene: tuple[Path, Path], tmp_path: Path, how: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    before = checksums(photos)
    manifest = tmp_path / "m.json"
    assert act.main([str(result), how, "--manifest", str(manifest), "--apply"]) == 0
    assert (tmp_path / "m.files" / "sub" / "a_copy.png").is_file()
    capsys.readouterr()
    assert undo.main([str(manifest)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "restored 3 files"
    assert checksums(photos) == before
    assert not (tmp_path / "m.files").exists() and manifest.is_file()


def test_undo_keeps_an_undo_folder_that_still_holds_a_file(scene: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    manifest = tmp_path / "m.json"
    assert act.main([str(result), "--hardlink", "--manifest", str(manifest), "--apply"]) == 0
    (photos / "b.png").unlink()
    (photos / "b.png").write_bytes(b"something new")  # b.png cannot be put back: its file stays in m.files
    capsys.readouterr()
    assert undo.main([str(manifest)]) == 1
    assert sorted(p.relative_to(tmp_path / "m.files").as_posix() for p in (tmp_path / "m.files").rglob("*")) == [
        "b.png"]  # the emptied sub/ is gone, the file still to restore is kept


def test_a_file_that_is_not_a_manifest_is_named_right(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.json"
    path.write_text("{nope")
    assert undo.main([str(path)]) == 2
    assert capsys.readouterr().err == (f"error: {path}: not a SameSpace undo manifest (not JSON: line 1: Expecting "
                                       "property name enclosed in double quotes)\n")


def test_a_result_of_embeddings_names_the_photos_folder_and_can_be_acted_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    write_scene(photos)
    store, result = tmp_path / "store.npz", tmp_path / "result.json"
    assert find.main([str(photos), "--method", "phash", "--no-progress", "--store", str(store)]) == 0
    assert find.main(["--embeddings", str(store), "--method", "phash", "--no-progress", "--json", str(result)]) == 0
    assert json.loads(result.read_text())["summary"]["folders"] == [str(photos)]
    capsys.readouterr()
    assert act.main([str(result), "--move-to", str(tmp_path / "dups")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("dry run: 2 groups, 3 files to move; nothing changed")


@pytest.mark.parametrize("paths, folders", [
    (["/p/a/1.jpg", "/p/a/b/2.jpg"], ["/p/a"]),
    (["/p/a/1.jpg", "/p/c/2.jpg"], ["/p"]),
    (["/p/1.jpg"], ["/p"]),
    (["/p/a/1.jpg", "/q/2.jpg", "/p/a/b/3.jpg", "/p/ab/4.jpg"], ["/p/a", "/p/ab", "/q"]),  # never the root
])
def test_the_folders_of_a_stores_photos(paths: list[str], folders: list[str]) -> None:
    assert find.photo_folders(paths) == folders
