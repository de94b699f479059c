"""data.py sample / download output folders: a refused or failed run leaves nothing,
and a bad folder is one line with exit status 2 before anything is generated or downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

import data
from samespace import kaggle_data, outputs
from samespace.devsets import sample_set


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_sample_with_one_split_present_writes_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "out" / "Test Data").mkdir(parents=True)
    assert data.main(["sample", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'out' / 'Test Data'}: already exists" in err and err.count("\n") == 1
    assert _files(tmp_path / "out") == ["Test Data"]


def test_a_sample_run_failing_midway_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = sample_set.photograph

    def fail_late(scene, rng):
        calls["n"] += 1
        if calls["n"] == 40:  # well into the second split
            raise OSError(28, "No space left on device")
        return real(scene, rng)

    monkeypatch.setattr(sample_set, "photograph", fail_late)
    target = tmp_path / "new" / "sample"
    with pytest.raises(OSError, match="No space left"):
        sample_set.write_sample_dataset(target, rooms={"Training Data": 2, "Test Data": 2})
    assert _files(tmp_path) == []  # not even the folders this run created

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("x")
    calls["n"] = 0
    with pytest.raises(OSError):
        sample_set.write_sample_dataset(kept, rooms={"Training Data": 2, "Test Data": 2})
    assert _files(kept) == ["mine.txt"]


def test_bad_sample_and_download_folders_are_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    monkeypatch.setattr(kaggle_data, "download_data", lambda path: pytest.fail("download started"))
    for argv, words in [
        (["sample", str(a_file / "sample")], f"{a_file} is not a folder"),
        (["sample", str(a_file)], "is a file, expected a folder"),
        (["download", "--path", str(a_file)], f"--path {a_file}: is a file, expected a folder"),
    ]:
        assert data.main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert a_file.read_text() == "x"


def test_sample_into_a_read_only_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    real = outputs.tempfile.mkstemp
    read_only = tmp_path / "ro"
    read_only.mkdir()

    def refuse(*args, dir=None, **kwargs):  # noqa: A002 - mkstemp's own keyword
        if Path(dir) == read_only:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)  # root ignores permission bits: simulate them
    assert data.main(["sample", str(read_only / "sample")]) == 2
    assert "cannot write in" in capsys.readouterr().err
    assert _files(tmp_path) == ["ro"]
