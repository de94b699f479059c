"""Each output replaces only a SameSpace file of its own kind without --overwrite, and two outputs never share
standard output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_actions import write_scene

from samespace import outputs
from samespace.commands import embed, find

FAST = ["--method", "phash", "--no-progress"]


@pytest.fixture()
def written(tmp_path: Path) -> dict[str, Path]:
    """The photos and one file of each kind find writes: a JSON result, a CSV, a review page and a store."""
    photos = tmp_path / "photos"
    write_scene(photos)
    out = tmp_path / "out"
    out.mkdir()
    files = {"photos": photos, "json": out / "dups.json", "csv": out / "dups.csv", "html": out / "review.html",
             "store": out / "store.npz"}
    assert find.main([str(photos), *FAST, "--json", str(files["json"]), "--csv", str(files["csv"]), "--html",
                      str(files["html"]), "--store", str(files["store"])]) == 0
    return files


def test_each_written_file_is_recognised_as_its_kind(written: dict[str, Path], tmp_path: Path) -> None:
    assert {name: outputs.file_kind(written[name]) for name in ("json", "csv", "html", "store")} == {
        "json": outputs.RESULT_JSON, "csv": outputs.PAIRS_CSV, "html": outputs.REVIEW_PAGE, "store": outputs.STORE}
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "notes").write_text("my notes")
    assert outputs.file_kind(tmp_path / "empty") == "" and outputs.file_kind(tmp_path / "notes") is None


@pytest.mark.parametrize("command, option, target, holds, wants", [
    ("find", "--json", "store", outputs.STORE, outputs.RESULT_JSON),
    ("find", "--csv", "json", outputs.RESULT_JSON, outputs.PAIRS_CSV),
    ("find", "--html", "csv", outputs.PAIRS_CSV, outputs.REVIEW_PAGE),
    ("find", "--store", "html", outputs.REVIEW_PAGE, outputs.STORE),
    ("embed", "--store", "json", outputs.RESULT_JSON, outputs.STORE),
])
def test_a_samespace_file_of_another_kind_needs_overwrite(written: dict[str, Path], command: str, option: str,
                                                         target: str, holds: str, wants: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = written[target]
    before = path.read_bytes()
    main = find.main if command == "find" else embed.main
    argv = [str(written["photos"]), *FAST, option, str(path)]
    if command == "embed":
        argv.remove("--no-progress")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {option} {path}: holds {holds}, not {wants}; pass --overwrite to replace it, or choose "
                   "another name\n")
    assert path.read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0
    assert outputs.file_kind(path) == wants


def test_a_file_of_the_same_kind_is_replaced_without_a_flag(written: dict[str, Path]) -> None:
    argv = [str(written["photos"]), *FAST, *(x for name in ("json", "csv", "html") for x in (f"--{name}",
                                                                                           str(written[name])))]
    assert find.main([*argv, "--store", str(written["store"])]) == 0
    assert json.loads(written["json"].read_text())["groups"]


def test_an_undo_manifest_is_named_as_one(tmp_path: Path) -> None:
    manifest = tmp_path / "dups.undo-20250101-120000.json"
    manifest.write_text(json.dumps({"format": "samespace-undo", "version": 1, "steps": []}, indent=1) + "\n")
    assert outputs.file_kind(manifest) == outputs.UNDO_MANIFEST
    with pytest.raises(outputs.OutputError) as caught:
        outputs.check_outputs([outputs.Target("--json", manifest, kind=outputs.RESULT_JSON)])
    assert str(caught.value) == (f"--json {manifest}: holds an undo manifest (samespace undo reads it to put files "
                                 "back), not a find result (JSON); pass --overwrite to replace it, or choose another "
                                 "name")
    outputs.check_outputs([outputs.Target("--json", manifest, kind=outputs.RESULT_JSON)], overwrite=True)


@pytest.mark.parametrize("first, second", [("-", "-"), ("-", "/dev/stdout"), ("/dev/stdout", "-")])
def test_two_outputs_to_standard_output_are_refused(written: dict[str, Path], first: str, second: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert find.main([str(written["photos"]), *FAST, "--no-cache", "--json", first, "--csv", second]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("error: --json and --csv both name standard output; give each output its own path\n")
    assert captured.out == ""
    with pytest.raises(outputs.OutputError, match="--json and --scores both name standard output"):
        outputs.check_outputs([outputs.Target("--json", Path(first), stream=True),
                               outputs.Target("--scores", Path(second), stream=True)])


def test_one_output_to_standard_output_still_streams(written: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert find.main([str(written["photos"]), *FAST, "--no-cache", "--json", "-", "--csv",
                      str(written["csv"])]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["files"] == 6
