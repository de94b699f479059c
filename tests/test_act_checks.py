"""act and undo: a dry run refuses what --apply refuses, counts read right, undo tidies its folder, a result
of ``find --embeddings`` can be acted on, and an interrupt never leaves a moved file out of the manifest."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from test_actions import checksums, run_find, write_scene

from samespace import actions, cli, interrupts, undoing
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


def _interrupt_after_the_first_move(monkeypatch: pytest.MonkeyPatch, signum: int = signal.SIGINT) -> list[str]:
    """Press Ctrl-C (a real SIGINT; or send ``signum``) right after act's first file move, before anything else
    runs."""
    real, moved = actions.move_file, []

    def move_then_interrupt(src: str, dst: str, sha: str) -> None:
        real(src, dst, sha)
        moved.append(str(dst))
        if len(moved) == 1:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(actions, "move_file", move_then_interrupt)
    return moved


@pytest.mark.parametrize("how, signum", [("--move-to", signal.SIGINT), ("--hardlink", signal.SIGINT),
                                         ("--move-to", signal.SIGTERM)])
def test_ctrl_c_during_a_step_stops_after_it_is_recorded_and_undo_restores_everything(
        scene: tuple[Path, Path], tmp_path: Path, how: str, signum: int, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    photos, result = scene
    before = checksums(photos)
    manifest = tmp_path / "m.json"
    moved = _interrupt_after_the_first_move(monkeypatch, signum)
    where = [how, str(tmp_path / "dups")] if how == "--move-to" else [how]
    code, last = (cli.EXIT_INTERRUPTED, "interrupted") if signum == signal.SIGINT else (cli.EXIT_TERMINATED,
                                                                                       "terminated")
    assert cli.main(["act", str(result), *where, "--manifest", str(manifest), "--apply"]) == code
    assert capsys.readouterr().err.splitlines()[-2:] == [
        f"stopped after 1 file; undo with: samespace undo {manifest}", last]
    steps = json.loads(manifest.read_text())["steps"]
    assert [s["moved_to"] for s in steps] == moved  # the one file moved is recorded, and no other moved
    assert steps[0]["link"] == (None if how == "--move-to" else "hardlink")  # a link step is finished, not cut
    assert len(set(checksums(photos)) ^ set(before)) == (1 if how == "--move-to" else 0)
    monkeypatch.undo()
    assert undo.main([str(manifest)]) == 0
    assert checksums(photos) == before


def test_ctrl_c_during_undo_puts_the_file_of_that_step_back_first(
        scene: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos, result = scene
    before = checksums(photos)
    manifest = tmp_path / "m.json"
    assert act.main([str(result), "--symlink", "--manifest", str(manifest), "--apply"]) == 0
    real = undoing.move_file

    def interrupt_then_move(src: str, dst: str, sha: str) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # after the step removed its link, before the file is back
        real(src, dst, sha)

    monkeypatch.setattr(undoing, "move_file", interrupt_then_move)
    with pytest.raises(KeyboardInterrupt):
        undo.main([str(manifest)])
    last = json.loads(manifest.read_text())["steps"][-1]["original"]  # undo goes from the last step back
    name = Path(last).relative_to(photos).as_posix()
    assert checksums(photos)[name] == before[name]  # the file, not its link, and not missing
    monkeypatch.undo()
    assert undo.main([str(manifest)]) == 0
    assert checksums(photos) == before


def test_held_signals_act_once_each_when_the_block_ends_and_their_handlers_come_back() -> None:
    came: list[int] = []

    def note(signum: int, frame: object) -> None:
        came.append(signum)

    previous = signal.signal(signal.SIGTERM, note)
    try:
        with interrupts.deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert came == []  # nothing acts inside the block
        assert came == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is note
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    with pytest.raises(KeyboardInterrupt), interrupts.deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        came.append(0)  # still runs: Ctrl-C waits for the end of the block
    assert came == [signal.SIGTERM, 0]


def test_kill_raises_terminated_inside_the_block_only() -> None:
    with pytest.raises(interrupts.Terminated), interrupts.terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # any call: the handler runs between bytecodes, before the block ends
        pytest.fail("SIGTERM did not stop the block")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert issubclass(interrupts.Terminated, KeyboardInterrupt)  # every Ctrl-C cleanup runs for it
