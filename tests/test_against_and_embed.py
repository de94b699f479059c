"""--against groups keep their pairs; a store name leaves room for its segments; embed's warnings, counts and
parts."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

from PIL import Image
from test_actions import _group_members, run_find, write_scene

from samespace import embedding_store
from samespace.commands import act, embed, find


def test_new_photos_sharing_library_matches_keep_their_pairs(tmp_path: Path) -> None:
    library, new = tmp_path / "library", tmp_path / "new"
    write_scene(library)
    new.mkdir()
    for name in ("copy.png", "copy_again.png"):  # both match a.png, sub/a_copy.png and a_big.png
        shutil.copyfile(library / "a.png", new / name)
    shutil.copyfile(library / "b.png", new / "other.png")
    result, table = tmp_path / "r.json", tmp_path / "r.csv"
    assert find.main([str(new), "--against", str(library), "--method", "phash", "--no-cache", "--no-progress",
                      "--json", str(result), "--csv", str(table)]) == 0
    document = json.loads(result.read_text())
    by_new = {Path(g["members"][0]).name: g for g in document["groups"]}
    assert set(by_new) == {"copy.png", "copy_again.png", "other.png"}
    for name, group in by_new.items():
        expected = [p for p in document["pairs"] if str(new / name) in p[:2]]
        assert group["pairs"] == expected and len(expected) == len(group["members"]) - 1, name
    assert len(by_new["copy.png"]["pairs"]) == 3
    with table.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert len(rows) == sum(len(g["pairs"]) for g in document["groups"]) == len(document["pairs"])


def test_a_store_name_leaves_room_for_its_segments(tmp_path: Path, capsys) -> None:
    """A store grows by segments named after it (``<name>.seg-<16 hex>``, written through a temporary name): a name
    that leaves no room for them is refused up front, new or existing, instead of warning on every run."""
    photos = tmp_path / "photos"
    write_scene(photos)
    fits = tmp_path / ("s" * (255 - 35 - 4) + ".npz")  # 220 bytes
    assert find.main([str(photos), "--method", "phash", "--no-progress", "--store", str(fits)]) == 0
    Image.open(photos / "c.png").rotate(90).save(photos / "c_turned.png")  # a new photo: this run saves rows
    assert find.main([str(photos), "--method", "phash", "--no-progress", "--store", str(fits)]) == 0
    assert "cannot write" not in capsys.readouterr().err
    too_long = tmp_path / ("t" * (255 - 35 - 3) + ".npz")  # 221 bytes
    assert find.main([str(photos), "--method", "phash", "--no-progress", "--store", str(too_long)]) == 2
    assert "file name too long (221 bytes; at most 220 here)" in capsys.readouterr().err
    fits.rename(too_long)  # an existing store of that name is refused too: it could never grow
    assert find.main([str(photos), "--method", "phash", "--no-progress", "--store", str(too_long)]) == 2
    assert not list(tmp_path.glob(".*tmp"))


def test_embed_warns_in_one_line_counts_new_rows_and_leaves_no_part(tmp_path: Path, capsys, caplog,
                                                                    monkeypatch) -> None:
    photos, store = tmp_path / "photos", tmp_path / "s.npz"
    write_scene(photos)
    assert find.main([str(photos), "--method", "whash", "--no-progress", "--store", str(store)]) == 0
    capsys.readouterr()
    caplog.set_level(logging.INFO, logger="samespace")

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings' API
        # what Python prints outside pytest (which records warnings instead): the installed formatwarning
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    assert embed.main([str(photos), "--method", "phash", "--store", str(store)]) == 2  # another method's store
    assert capsys.readouterr().err == (f"error: {store}: an embedding store made by whash, not phash; it is read with "
                                       "--method whash; pass --overwrite to replace it, or choose another --store\n")
    assert embed.main([str(photos), "--method", "phash", "--store", str(store), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "ignoring the embedding store" in err and "UserWarning" not in err
    caplog.clear()
    assert embed.main([str(photos), "--method", "phash", "--store", str(store)]) == 0  # nothing new this time
    assert re.search(r"s\.npz: 6 photos, \d+ distinct contents, 0 new", caplog.text), caplog.text
    before = store.read_bytes()

    save = embedding_store.EmbeddingStore.save

    def refused(self: embedding_store.EmbeddingStore, path: Path, compact: bool = False) -> None:
        if Path(path) == store:  # as an immutable store refuses; the rank's part file still saves
            raise PermissionError(1, "Operation not permitted", str(path))
        save(self, path, compact)

    monkeypatch.setattr(embedding_store.EmbeddingStore, "save", refused)
    Image.open(photos / "c.png").rotate(90).save(photos / "c_turned.png")
    assert embed.main([str(photos), "--method", "phash", "--store", str(store)]) == 2
    assert capsys.readouterr().err.strip().endswith("s.npz: cannot write the embedding store (Operation not permitted)")
    assert store.read_bytes() == before and not list(tmp_path.glob("s.npz.part-*"))


def test_embeddings_alone_leave_out_photos_moved_deleted_or_edited_since(tmp_path: Path, capsys,
                                                                         monkeypatch) -> None:
    photos, store, result = tmp_path / "photos", tmp_path / "s.npz", tmp_path / "r.json"
    write_scene(photos)  # groups: a, a_big, sub/a_copy; b.png, b.jpg; c alone
    assert embed.main([str(photos), "--method", "phash", "--store", str(store)]) == 0
    (photos / "a_big.png").rename(photos / "a_big_renamed.png")
    (photos / "b.jpg").unlink()
    Image.open(photos / "c.png").rotate(90).save(photos / "c.png")  # edited in place
    capsys.readouterr()

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings' API
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    assert find.main(["--embeddings", str(store), "--method", "phash", "--no-progress", "--json", str(result)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {store}: 2 photos left out, not found at the listed path (moved or deleted)" in err
    assert f"warning: {store}: 1 photo left out, edited since the store embedded it" in err
    document = json.loads(result.read_text())
    reported = {Path(m).name for g in document["groups"] for m in g["members"]}
    assert reported == {"a.png", "a_copy.png"} and document["summary"]["images"] == 3  # a, sub/a_copy, b.png
    shutil.move(photos, tmp_path / "elsewhere")  # none here: the store alone speaks for every photo it lists
    assert find.main(["--embeddings", str(store), "--method", "phash", "--no-progress", "--json", str(result)]) == 0
    assert json.loads(result.read_text())["summary"]["images"] == 6
    assert "left out" not in capsys.readouterr().err


def test_a_link_to_a_library_photo_is_that_photo_not_a_duplicate(tmp_path: Path, capsys, monkeypatch) -> None:
    """A symbolic or hard link under PHOTOS_DIR to a library photo is the library photo itself: it is counted once,
    on the library side, as a file reached twice in one folder is, and one warning says so."""
    library, new = tmp_path / "library", tmp_path / "new"
    write_scene(library)
    new.mkdir()
    (new / "linked.png").symlink_to(library / "b.png")
    (new / "hard.png").hardlink_to(library / "c.png")
    shutil.copyfile(library / "b.png", new / "copied.png")  # a real copy stays a new photo

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings' API
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    result = tmp_path / "r.json"
    assert find.main([str(new), "--against", str(library), "--method", "phash", "--no-cache", "--no-progress",
                      "--json", str(result)]) == 0
    err = capsys.readouterr().err
    assert f"2 photos under {new} are links to --against photos; they count once, as library photos" in err
    document = json.loads(result.read_text())
    members = {Path(m).name for g in document["groups"] for m in g["members"]}
    assert "linked.png" not in members and "hard.png" not in members and "copied.png" in members
    assert document["summary"]["new_images"] == 1


def test_after_act_hardlink_a_rerun_finds_those_duplicates_gone(tmp_path: Path) -> None:
    """``act --hardlink`` turns each duplicate into a hard link to its keeper: one file, which a re-run counts once
    (as a symbolic link already was), so the groups it resolved are not reported again."""
    photos = tmp_path / "photos"
    write_scene(photos)
    first = run_find(tmp_path / "first.json", photos)
    assert len(_group_members(first)) == 2
    assert act.main([str(first), "--hardlink", "--apply"]) == 0
    second = run_find(tmp_path / "second.json", photos)
    document = json.loads(second.read_text())
    # a.png and sub/a_copy.png are now a_big.png, b.png is b.jpg: three files, none a duplicate of another
    assert document["summary"]["images"] == document["summary"]["files"] == 3
    assert document["groups"] == [] and document["pairs"] == []


def test_a_file_system_without_inode_numbers_never_merges_two_photos(tmp_path: Path, monkeypatch) -> None:
    """Some network and FUSE file systems report inode 0 for every file: each path is then its own photo."""
    from samespace import photo_files

    write_scene(tmp_path / "photos")
    real_stat = photo_files.os.stat

    def no_inodes(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - os.stat's signature
        info = real_stat(path, *args, **kwargs)
        return os.stat_result((info.st_mode, 0, *tuple(info)[2:]))

    monkeypatch.setattr(photo_files.os, "stat", no_inodes)
    assert len(photo_files.image_files([tmp_path / "photos"])) == 6
