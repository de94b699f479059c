"""Acting on a find result: the keeper rule, the dry run, moves and links, undo, and hostile result files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samespace import actions, choices, cli, content_keys, keepers
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


def test_the_result_records_each_members_content_key(scene: tuple[Path, Path]) -> None:
    photos, result = scene
    for group in json.loads(result.read_text())["groups"]:
        assert group["keys"] == [content_keys.content_key(m) for m in group["members"]]


def test_other_files_at_the_reported_paths_are_refused_whatever_their_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The result used from another folder that has files of the same names (or photos replaced with their old
    modification times kept, as ``cp -p`` does): nothing of them is moved."""
    write_scene(tmp_path / "scan" / "photos")
    monkeypatch.chdir(tmp_path / "scan")
    run_find(tmp_path / "result.json", Path("photos"))
    other = tmp_path / "other" / "photos"
    write_scene(other)
    for k, name in enumerate(["a.png", "sub/a_copy.png", "b.jpg"]):  # the keepers' and duplicates' names
        Image.fromarray(_blocks(10 + k)).save(other / name, format="PNG")
        os.utime(other / name, (OLD, OLD))
    monkeypatch.chdir(tmp_path / "other")
    before = checksums(other)
    capsys.readouterr()
    assert act.main([str(tmp_path / "result.json"), "--move-to", str(tmp_path / "dups"), "--apply"]) == 1
    err = capsys.readouterr().err.splitlines()
    # a_big.png and b.png are the scanned bytes (write_scene is deterministic); every other member is not, so each
    # photo that would move either holds other bytes or has a keeper that does.
    assert len(err) == 3 and all(" holds other bytes than when result.json was written (run find again); left "
                                 "alone" in line for line in err), err
    assert "refused: photos/sub/a_copy.png: holds other bytes" in err[1]
    assert checksums(other) == before and not (tmp_path / "dups").exists()


def test_a_group_whose_keeper_was_replaced_is_refused(scene: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    plan = actions.make_plan(actions.load_result(result), "move")
    step = next(s for s in plan.steps if Path(s.path).stem == "b")  # b's group: one of b.png / b.jpg moves
    keeper = Path(step.keeper)
    noise = np.random.default_rng(7).integers(0, 256, (96, 128, 3), dtype=np.uint8)  # more bytes: still kept
    Image.fromarray(noise).save(keeper, format=Image.open(keeper).format)
    os.utime(keeper, (OLD, OLD))
    before = checksums(photos)
    capsys.readouterr()
    assert act.main([str(result), "--move-to", str(tmp_path / "dups"), "--apply"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"refused: {step.path}: its keeper {keeper} holds other bytes than when result.json was written "
                   "(run find again); left alone"]
    moved = Path(step.path).name
    assert checksums(photos)[moved] == before[moved] and not (tmp_path / "dups" / moved).exists()
    assert (tmp_path / "dups" / "a.png").exists()  # the other group is acted on as before


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
    assert "1 library photo left" in capsys.readouterr().out  # newest would pick the new photo: the library wins
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
    (b'{"groups": [{"members": ["PHOTOS/../../x.png", "PHOTOS/a.png"]}], "summary": {"folders": ["PHOTOS"]}}',
     "is not under the scanned folders"),
    (b'{"groups": [{"members": ["PHOTOS/a.png", "PHOTOS/notes.txt"]}], "summary": {"folders": ["PHOTOS"]}}',
     "notes.txt is not an image file name"),
    (b'{"groups": [{"members": ["PHOTOS/a.png", "PHOTOS/b.png"], '
     b'"keys": ["00000000000000000000000000000000"]}], "summary": {"folders": ["PHOTOS"]}}',
     "groups[0].keys must list one content key (32 hex digits) or null per member"),
    (b'{"groups": [{"members": ["PHOTOS/a.png", "PHOTOS/b.png"], "keys": [null, "../x"]}], "summary": {"folders": '
     b'["PHOTOS"]}}', "groups[0].keys must list one content key"),
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


# --------------------------------------------------------------------------------------------
# --trash and undo from the trash
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def home_trash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary freedesktop home trash ($XDG_DATA_HOME/Trash) on the photos' file system.

    send2trash reads XDG_DATA_HOME when it is imported, so its copies of the locations are set here too; HOME
    moves so the trash is on the same device as the photos (else send2trash uses the volume's .Trash-UID)."""
    from send2trash import plat_other

    data_home = tmp_path / "xdg-data"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    monkeypatch.setattr(plat_other, "XDG_DATA_HOME", os.fsencode(data_home))
    monkeypatch.setattr(plat_other, "HOMETRASH_B", os.fsencode(data_home / "Trash"))
    monkeypatch.setattr(plat_other, "HOMETRASH", str(data_home / "Trash"))
    return data_home / "Trash"


def _trash_contents(trash_dir: Path) -> dict[str, str]:
    return checksums(trash_dir / "files") if (trash_dir / "files").exists() else {}


def test_trash_dry_run_changes_nothing(scene: tuple[Path, Path], tmp_path: Path, home_trash: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    before = checksums(photos)
    assert act.main([str(result), "--trash"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"trash {photos / 'a.png'}  keep {photos / 'a_big.png'}: highest resolution (256x192)" in out
    assert out[-1].startswith("dry run: 2 groups, 3 files to trash; nothing changed")
    assert checksums(photos) == before and not home_trash.exists()


def test_trash_sends_the_non_keepers_there_and_undo_restores_every_byte(
        scene: tuple[Path, Path], tmp_path: Path, home_trash: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    before = checksums(photos)
    manifest = tmp_path / "undo.json"
    assert act.main([str(result), "--trash", "--manifest", str(manifest), "--apply"]) == 0
    assert set(checksums(photos)) == set(before) - {"a.png", "sub/a_copy.png", "b.png"}
    trashed = _trash_contents(home_trash)
    assert sorted(trashed.values()) == sorted(before[m] for m in ("a.png", "sub/a_copy.png", "b.png"))
    assert sorted(trashed) == ["a.png", "a_copy.png", "b.png"]
    steps = {s["original"]: s for s in json.loads(manifest.read_text())["steps"]}
    info = (home_trash / "info" / (Path(steps[str(photos / "b.png")]["moved_to"]).name + ".trashinfo")).read_text()
    assert f"Path={photos / 'b.png'}\n" in info and "DeletionDate=" in info
    assert all(s["trashed"] and s["sha256"] == before[Path(o).relative_to(photos).as_posix()]
               for o, s in steps.items())
    capsys.readouterr()
    assert undo.main([str(manifest)]) == 0
    assert "restored 3 files" in capsys.readouterr().out
    assert checksums(photos) == before
    assert _trash_contents(home_trash) == {} and list((home_trash / "info").iterdir()) == []
    assert undo.main([str(manifest)]) == 0 and "nothing to undo" in capsys.readouterr().out


def test_undo_finds_a_trashed_file_by_its_trashinfo_and_checks_its_bytes(
        scene: tuple[Path, Path], tmp_path: Path, home_trash: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    before = checksums(photos)
    manifest = tmp_path / "undo.json"
    assert act.main([str(result), "--trash", "--only", "identical", "--manifest", str(manifest), "--apply"]) == 0
    # Another file of the same path trashed later with other bytes, and the recorded entry renamed in the trash
    # (as a file manager may do): undo picks the entry whose size and sha256 match.
    from samespace import trash

    (photos / "sub" / "a_copy.png").write_bytes(b"a newer file of the same name")
    trash.send(photos / "sub" / "a_copy.png")
    assert sorted(_trash_contents(home_trash)) == ["a_copy 1.png", "a_copy.png"]
    os.rename(home_trash / "files" / "a_copy.png", home_trash / "files" / "moved.png")
    os.rename(home_trash / "info" / "a_copy.png.trashinfo", home_trash / "info" / "moved.png.trashinfo")
    capsys.readouterr()
    assert undo.main([str(manifest)]) == 0
    assert checksums(photos) == before
    assert _trash_contents(home_trash) == {"a_copy 1.png": hashlib.sha256(b"a newer file of the same name").hexdigest()}


def test_undo_refuses_a_trashed_file_whose_bytes_changed_or_that_is_gone(
        scene: tuple[Path, Path], tmp_path: Path, home_trash: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    manifest = tmp_path / "undo.json"
    assert act.main([str(result), "--trash", "--only", "identical", "--manifest", str(manifest), "--apply"]) == 0
    (stored,) = (home_trash / "files").iterdir()
    stored.write_bytes(b"changed in the trash")
    capsys.readouterr()
    assert undo.main([str(manifest)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"refused: {photos / 'sub' / 'a_copy.png'}: not in the trash with its recorded size and sha256 (emptied?); "
        "not restored"]
    assert stored.read_bytes() == b"changed in the trash" and not (photos / "sub" / "a_copy.png").exists()


def test_where_the_trash_cannot_be_read_undo_says_the_file_is_there(
        scene: tuple[Path, Path], tmp_path: Path, home_trash: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from samespace import trash

    photos, result = scene
    monkeypatch.setattr(trash, "readable", lambda: False)  # as on macOS and Windows
    manifest = tmp_path / "undo.json"
    assert act.main([str(result), "--trash", "--only", "identical", "--manifest", str(manifest), "--apply"]) == 0
    assert f"trash {photos / 'sub' / 'a_copy.png'} -> the system trash" in capsys.readouterr().out
    assert json.loads(manifest.read_text())["steps"][0]["moved_to"] is None
    assert undo.main([str(manifest)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"refused: {photos / 'sub' / 'a_copy.png'}: is in the system trash; restore it from there"]


def test_a_file_the_trash_refuses_is_left_where_it_was(scene: tuple[Path, Path], tmp_path: Path, home_trash: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from samespace import trash

    photos, result = scene
    before = checksums(photos)

    def refuse(path: str | Path) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(trash, "send", refuse)
    assert act.main([str(result), "--trash", "--manifest", str(tmp_path / "undo.json"), "--apply"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"refused: {photos / 'a.png'}: cannot move it to the trash (Permission denied); left alone"
    assert len(err) == 3 and checksums(photos) == before


@pytest.mark.parametrize("step, message", [
    ({"trashed": True, "original": "relative/a.png"}, "steps[0] is not a valid step"),
    ({"trashed": True, "trash_info": "x.trashinfo"}, "steps[0] is not a valid step"),
    ({"trashed": False, "moved_to": None}, "steps[0] is not a valid step"),
])
def test_a_hostile_trash_manifest_is_refused(tmp_path: Path, step: dict, message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rec = {"original": "/p/a.png", "moved_to": "/t/files/a.png", "keeper": "/p/b.png", "sha256": "0" * 64,
           "size": 3, "link": None, **step}
    path = _hostile(tmp_path, json.dumps({"format": actions.MANIFEST_FORMAT, "steps": [rec]}).encode())
    assert undo.main([str(path)]) == cli.EXIT_ERROR
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0]


def test_undo_never_takes_a_file_a_manifest_names_outside_the_trash(
        scene: tuple[Path, Path], tmp_path: Path, home_trash: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos, _ = scene
    bait = tmp_path / "elsewhere.png"
    bait.write_bytes(b"not in any trash")
    rec = {"original": str(photos / "gone.png"), "moved_to": str(bait), "trash_info": str(photos / "a.png"),
           "trashed": True, "keeper": str(photos / "b.png"), "sha256": hashlib.sha256(bait.read_bytes()).hexdigest(),
           "size": bait.stat().st_size, "link": None}
    path = _hostile(tmp_path, json.dumps({"format": actions.MANIFEST_FORMAT, "steps": [rec]}).encode())
    before = checksums(photos)
    assert undo.main([str(path)]) == 1
    assert "not in the trash" in capsys.readouterr().err
    assert bait.read_bytes() == b"not in any trash" and checksums(photos) == before


# --------------------------------------------------------------------------------------------
# --choices: the photos ticked on the review page
# --------------------------------------------------------------------------------------------


def write_choices(path: Path, result: Path, act_on: list[str], **extra: object) -> Path:
    groups = _group_members(result)
    doc = {"format": choices.CHOICES_FORMAT, "version": 1, "groups": choices.groups_digest(groups),
           "act_on": act_on, **extra}
    path.write_text(json.dumps(doc))
    return path


def test_choices_act_on_exactly_the_photos_named(scene: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    before = checksums(photos)
    # Keep a.png (the rule would keep a_big.png) and act on a_big.png only; group b is left alone.
    picked = write_choices(tmp_path / "choices.json", result, [str(photos / "a_big.png")])
    assert act.main([str(result), "--choices", str(picked), "--move-to", str(tmp_path / "dups")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"move {photos / 'a_big.png'}  keep {photos / 'a.png'}: chosen on the review page"
    assert out[-1].startswith("dry run: 1 group, 1 file to move; nothing changed") and checksums(photos) == before
    assert act.main([str(result), "--choices", str(picked), "--symlink", "--apply"]) == 0
    assert os.readlink(photos / "a_big.png") == str((photos / "a.png").resolve())
    assert not (photos / "sub" / "a_copy.png").is_symlink() and not (photos / "b.png").is_symlink()


@pytest.mark.parametrize("edit, message", [
    (lambda d, p: {**d, "format": "other"}, "not a SameSpace choices file"),
    (lambda d, p: {**d, "groups": "0" * 64}, "made on the review page of another result"),
    (lambda d, p: {**d, "act_on": "PHOTOS/a.png"}, "act_on must be a list of non-empty path strings"),
    (lambda d, p: {**d, "act_on": ["/etc/passwd"]}, "act_on: /etc/passwd is not a photo of the groups of result.json"),
    (lambda d, p: {**d, "act_on": [f"{p}/c.png"]}, "c.png is not a photo of the groups"),
    (lambda d, p: {**d, "act_on": [f"{p}/b.png", f"{p}/b.png"]}, "b.png twice"),
    (lambda d, p: {**d, "act_on": [f"{p}/b.png", f"{p}/b.jpg"]}, "every photo of group 2 is chosen"),
    (lambda d, p: {**d, "act_on": [f"{p}/<script>.png"]}, "<script>.png is not a photo of the groups"),
])
def test_hostile_choices_are_one_line_exit_2_and_nothing_touched(
        scene: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, message: str) -> None:
    photos, result = scene
    before = checksums(photos)
    base = json.loads(write_choices(tmp_path / "c.json", result, []).read_text())
    path = _hostile(tmp_path, json.dumps(edit(base, str(photos))).encode())
    assert act.main([str(result), "--choices", str(path), "--move-to", str(tmp_path / "dups"), "--apply"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and message in err[0], err
    assert checksums(photos) == before and not (tmp_path / "dups").exists()


def test_choices_cannot_be_combined_with_only(scene: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    picked = write_choices(tmp_path / "c.json", result, [str(photos / "b.png")])
    assert act.main([str(result), "--choices", str(picked), "--trash", "--only", "identical"]) == 2
    assert "cannot be combined with --only" in capsys.readouterr().err


def test_a_chosen_group_whose_other_photos_cannot_be_read_is_refused(
        scene: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    picked = write_choices(tmp_path / "c.json", result, [str(photos / "b.png")])
    (photos / "b.jpg").unlink()  # the only photo of the group that would stay
    assert act.main([str(result), "--choices", str(picked), "--move-to", str(tmp_path / "dups"), "--apply"]) == 1
    err = capsys.readouterr().err
    assert f"refused: {photos / 'b.png'}: no photo of its group that stays can be read; left alone" in err
    assert (photos / "b.png").exists()
