"""Acting on a find result: the keeper rule, the dry run, moves and links, undo, and hostile result files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samespace import actions, cli, keepers
from samespace.commands import act, find, undo

OLD = 1_600_000_000  # the photos' modification time: well before the scan


def _blocks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.random((12, 16, 3)) * 255, np.ones((8, 8, 1))).astype(np.uint8)


def write_scene(root: Path) -> dict[str, Path]:
    """Three groups for phash: a (small), a_big (twice the pixels), sub/a_copy (a byte copy of a); b as PNG and
    JPEG; c alone. Every file gets an old modification time, one second apart in name order."""
    (root / "sub").mkdir(parents=True)
    a, b = Image.fromarray(_blocks(0)), Image.fromarray(_blocks(1))
    a.save(root / "a.png")
    (root / "sub" / "a_copy.png").write_bytes((root / "a.png").read_bytes())
    a.resize((256, 192)).save(root / "a_big.png")
    b.save(root / "b.png")
    b.save(root / "b.jpg", quality=90)
    Image.fromarray(_blocks(2)).save(root / "c.png")
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    for k, path in enumerate(files.values()):
        os.utime(path, (OLD + k, OLD + k))
    return files


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (links by their target name), by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[p.relative_to(root).as_posix()] = "link:" + os.readlink(p)
        elif p.is_file():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_find(result: Path, *folders: Path, against: Path | None = None) -> Path:
    argv = [*map(str, folders), "--method", "phash", "--no-cache", "--no-progress", "--json", str(result)]
    assert find.main(argv + (["--against", str(against)] if against else [])) == 0
    return result


@pytest.fixture()
def scene(tmp_path: Path) -> tuple[Path, Path]:
    """(photos folder, result JSON of find over it)."""
    photos = tmp_path / "photos"
    write_scene(photos)
    return photos, run_find(tmp_path / "result.json", photos)


def _group_members(result: Path) -> list[list[str]]:
    return [g["members"] for g in json.loads(result.read_text())["groups"]]


# --------------------------------------------------------------------------------------------
# Keeper rule
# --------------------------------------------------------------------------------------------


def _facts(path: str, w: int = 10, h: int = 10, size: int = 100, mtime: int = 5) -> keepers.Facts:
    return keepers.Facts(path, w, h, size, mtime)


def test_the_keeper_is_the_highest_resolution_then_largest_then_oldest_then_path() -> None:
    choice = keepers.choose_keeper([_facts("/p/a", 10, 10, 900), _facts("/p/b", 40, 30, 100)])
    assert choice.keeper.path == "/p/b" and choice.reason == "highest resolution (40x30)"
    choice = keepers.choose_keeper([_facts("/p/a", size=100), _facts("/p/b", size=200)])
    assert choice.keeper.path == "/p/b" and choice.reason == "largest file (200 bytes)"
    choice = keepers.choose_keeper([_facts("/p/a", mtime=9 * 10**9), _facts("/p/b", mtime=3 * 10**9)])
    assert choice.keeper.path == "/p/b" and choice.reason.startswith("oldest (")
    choice = keepers.choose_keeper([_facts("/p/b"), _facts("/p/a")])
    assert choice.keeper.path == "/p/a" and choice.reason == "first in path order"


def test_keep_rules_prefer_and_library_change_the_order() -> None:
    small_new = _facts("/p/a", 10, 10, 100, 9 * 10**9)
    big_old = _facts("/p/b", 20, 20, 50, 1 * 10**9)
    assert keepers.choose_keeper([small_new, big_old], "largest").keeper is small_new
    assert keepers.choose_keeper([small_new, big_old], "newest").keeper is small_new
    assert keepers.choose_keeper([small_new, big_old], "oldest").keeper is big_old
    preferred = keepers.choose_keeper([_facts("/x/a", 5, 5), _facts("/p/b", 50, 50)], prefer=["/x"])
    assert preferred.keeper.path == "/x/a" and "preferred folder /x" in preferred.reason
    library = keepers.choose_keeper([_facts("/p/b", 50, 50), _facts("/lib/a", 5, 5)], prefer=["/p"], library=["/lib"])
    assert library.keeper.path == "/lib/a" and library.reason.startswith("in the library")
    with pytest.raises(ValueError, match="--keep"):
        keepers.choose_keeper([small_new, big_old], "prettiest")


def test_read_facts_parses_the_header(tmp_path: Path) -> None:
    Image.new("RGB", (64, 48)).save(tmp_path / "x.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert (keepers.read_facts(tmp_path / "x.jpg").width, keepers.read_facts(tmp_path / "x.jpg").height) == (64, 48)
    assert keepers.read_facts(tmp_path / "bad.jpg").pixels == 0


# --------------------------------------------------------------------------------------------
# act and undo
# --------------------------------------------------------------------------------------------


def test_the_dry_run_changes_nothing(scene: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    photos, result = scene
    before = checksums(tmp_path)
    assert act.main([str(result), "--move-to", str(tmp_path / "dups")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert checksums(tmp_path) == before and not (tmp_path / "dups").exists()
    assert f"move {photos / 'a.png'}  keep {photos / 'a_big.png'}: highest resolution (256x192)" in out
    assert out[-1].startswith("dry run: 2 groups, 3 files to move; nothing changed")


def test_apply_moves_exactly_the_non_keepers_and_undo_restores_every_byte(
        scene: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    before = checksums(photos)
    members = {p for group in _group_members(result) for p in group}
    keepers_ = {str(photos / "a_big.png"), str(photos / "b.jpg")}
    dups = tmp_path / "dups"
    assert act.main([str(result), "--move-to", str(dups), "--apply"]) == 0
    out = capsys.readouterr().out
    moved = {"a.png", "sub/a_copy.png", "b.png"}
    assert {str(photos / m) for m in moved} == members - keepers_
    assert set(checksums(dups)) == moved
    assert set(checksums(photos)) == set(before) - moved
    assert all(checksums(dups)[m] == before[m] for m in moved)
    manifest = Path(out.strip().split("samespace undo ")[-1])
    assert manifest.parent == tmp_path and manifest.name.startswith("result.undo-")
    assert undo.main([str(manifest)]) == 0
    assert checksums(photos) == before and checksums(dups) == {}
    capsys.readouterr()
    assert undo.main([str(manifest)]) == 0
    assert "nothing to undo" in capsys.readouterr().out
    assert checksums(photos) == before


@pytest.mark.parametrize("how", ["--hardlink", "--symlink"])
def test_links_replace_duplicates_and_undo_puts_the_files_back(scene: tuple[Path, Path], tmp_path: Path, how: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    before = checksums(photos)
    assert act.main([str(result), how, "--apply"]) == 0
    if how == "--symlink":
        assert os.readlink(photos / "b.png") == str((photos / "b.jpg").resolve())
    else:
        assert (photos / "b.png").stat().st_ino == (photos / "b.jpg").stat().st_ino
    manifest = Path(capsys.readouterr().out.strip().split("samespace undo ")[-1])
    assert undo.main([str(manifest)]) == 0
    assert checksums(photos) == before and not (photos / "b.png").is_symlink()


def test_a_photo_edited_after_the_scan_is_refused_and_untouched(scene: tuple[Path, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    (photos / "b.png").write_bytes((photos / "b.png").read_bytes() + b"edited")
    before = checksums(photos)
    assert act.main([str(result), "--move-to", str(tmp_path / "dups"), "--apply"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"refused: {photos / 'b.png'}: modified after result.json was written (run find again); left alone"]
    assert checksums(photos)["b.png"] == before["b.png"]
    assert not (tmp_path / "dups" / "b.png").exists() and (tmp_path / "dups" / "a.png").exists()


def test_a_file_changed_between_plan_and_apply_is_refused(scene: tuple[Path, Path], tmp_path: Path) -> None:
    photos, result = scene
    plan = actions.make_plan(actions.load_result(result), "move")
    edited = photos / "a.png"
    step = next(s for s in plan.steps if s.path == str(edited))
    edited.write_bytes(b"x" * step.size)  # same size and modification time: only the sha256 tells
    os.utime(edited, ns=(step.mtime_ns, step.mtime_ns))
    manifest = actions.Manifest(tmp_path / "m.json", str(result), "move")
    done, refused = actions.apply_plan(plan, manifest, tmp_path / "dups", tmp_path / "undo", report=lambda _: None)
    assert done == 2 and refused == [f"{edited}: changed since the plan was made; left alone"]
    assert edited.read_bytes() == b"x" * edited.stat().st_size


def test_a_library_folder_is_never_touched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    library, new = tmp_path / "library", tmp_path / "new"
    write_scene(library)
    new.mkdir()
    (new / "b_again.png").write_bytes((library / "b.png").read_bytes())
    os.utime(new / "b_again.png", (OLD, OLD))
    result = run_find(tmp_path / "new.json", new, against=library)
    assert json.loads(result.read_text())["summary"]["against"] == [str(library)]
    before = checksums(library)
    assert act.main([str(result), "--move-to", str(library / "dups"), "--apply"]) == cli.EXIT_ERROR
    assert "inside the scanned folder" in capsys.readouterr().err
    assert act.main([str(result), "--move-to", str(tmp_path / "dups"), "--keep", "newest", "--apply"]) == 0
    assert "1 library photos left" in capsys.readouterr().out  # newest would pick the new photo: the library wins
    assert checksums(library) == before
    assert checksums(tmp_path / "dups") == {"b_again.png": before["b.png"]} and not (new / "b_again.png").exists()


def test_only_identical_moves_only_byte_copies(scene: tuple[Path, Path], tmp_path: Path) -> None:
    photos, result = scene
    assert act.main([str(result), "--move-to", str(tmp_path / "dups"), "--only", "identical", "--apply"]) == 0
    moved = checksums(tmp_path / "dups")
    assert list(moved) == ["sub/a_copy.png"] and moved["sub/a_copy.png"] == checksums(photos)["a.png"]


def test_a_name_taken_in_the_destination_gets_a_number(scene: tuple[Path, Path], tmp_path: Path) -> None:
    photos, result = scene
    (tmp_path / "dups").mkdir()
    (tmp_path / "dups" / "a.png").write_bytes(b"someone else's")
    original = (photos / "a.png").read_bytes()
    assert act.main([str(result), "--move-to", str(tmp_path / "dups"), "--apply"]) == 0
    assert (tmp_path / "dups" / "a.png").read_bytes() == b"someone else's"
    assert (tmp_path / "dups" / "a (1).png").read_bytes() == original


def test_undo_never_replaces_what_is_now_at_the_original_path(scene: tuple[Path, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    manifest = tmp_path / "undo.json"
    assert act.main([str(result), "--move-to", str(tmp_path / "dups"), "--manifest", str(manifest), "--apply"]) == 0
    (photos / "b.png").write_bytes(b"new content")
    capsys.readouterr()
    assert undo.main([str(manifest)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"refused: {photos / 'b.png'}: something exists there now; not replaced"]
    assert (photos / "b.png").read_bytes() == b"new content" and (tmp_path / "dups" / "b.png").exists()
    assert act.main([str(result), "--move-to", str(tmp_path / "dups"), "--manifest", str(manifest), "--apply"]) == 2


def _hostile(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "hostile.json"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG not json", "not UTF-8"),
    (b"{nope", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not a SameSpace result"),
    (b'{"groups": {}, "summary": {}}', "expected an object with groups and summary"),
    (b'{"groups": [], "summary": {"folders": "/"}}', "summary.folders must be a list"),
    (b'{"groups": [{"members": [1, 2]}], "summary": {"folders": ["PHOTOS"]}}', "groups[0].members must be"),
    (b'{"groups": [{"members": ["/etc/passwd", "/etc/hosts"]}], "summary": {"folders": ["PHOTOS"]}}',
     "/etc/passwd is not under the scanned folders"),
    (b'{"groups": [{"members": ["PHOTOS/../../x", "PHOTOS/a.png"]}], "summary": {"folders": ["PHOTOS"]}}',
     "is not under the scanned folders"),
])
def test_a_hostile_result_is_one_line_exit_2_and_nothing_touched(
        scene: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes,
        message: str) -> None:
    photos, _ = scene
    before = checksums(photos)
    path = _hostile(tmp_path, content.replace(b"PHOTOS", str(photos).encode()))
    assert act.main([str(path), "--move-to", str(tmp_path / "dups"), "--apply"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and message in err[0], err
    assert checksums(photos) == before and not (tmp_path / "dups").exists()


def test_a_huge_or_special_result_is_refused_unread(scene: tuple[Path, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _, result = scene
    monkeypatch.setattr(actions, "MAX_RESULT_BYTES", 100)
    assert act.main([str(result), "--symlink"]) == cli.EXIT_ERROR
    assert "larger than 100 bytes" in capsys.readouterr().err
    assert act.main([str(tmp_path), "--symlink"]) == cli.EXIT_ERROR
    assert "not a regular file" in capsys.readouterr().err
    assert undo.main([str(result)]) == cli.EXIT_ERROR
    assert "not a SameSpace undo manifest" in capsys.readouterr().err


def test_relative_paths_are_taken_from_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_scene(tmp_path / "photos")
    before = checksums(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    run_find(Path("result.json"), Path("photos"))
    assert _group_members(Path("result.json"))[0][0] == "photos/a.png"
    capsys.readouterr()
    assert act.main(["result.json", "--move-to", "dups", "--apply"]) == 0
    assert set(checksums(tmp_path / "dups")) == {"a.png", "sub/a_copy.png", "b.png"}
    manifest = capsys.readouterr().out.strip().split("samespace undo ")[-1]
    assert undo.main([manifest]) == 0 and checksums(tmp_path / "photos") == before


def test_a_link_in_a_group_is_neither_kept_nor_acted_on(scene: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    (photos / "a_big.png").rename(tmp_path / "elsewhere.png")
    (photos / "a_big.png").symlink_to(tmp_path / "elsewhere.png")  # the best photo of group 1 is now a link
    assert act.main([str(result), "--move-to", str(tmp_path / "dups"), "--apply"]) == 1
    assert f"refused: {photos / 'a_big.png'}: not a regular file" in capsys.readouterr().err
    assert (photos / "a_big.png").is_symlink() and (tmp_path / "elsewhere.png").is_file()
    assert set(checksums(tmp_path / "dups")) == {"sub/a_copy.png", "b.png"}  # a.png is that group's keeper now
