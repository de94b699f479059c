"""Output locations: photos are never replaced, foreign files need --overwrite, two
outputs never share a path, and every bad location is one line with exit status 2 before any work."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from samespace import batch_decoding, checkpoint_loading, decoding, labelling, outputs
from samespace.commands import evaluate, find


@pytest.fixture()
def photos(tmp_path: Path, test_dir: Path) -> Path:
    """Five sample photos, two of one room, in a folder of their own; one photo is read-only."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for k, path in enumerate(labelling.find_images(test_dir)[:5]):
        shutil.copyfile(path, (root if k % 2 else root / "sub") / path.name)
    readonly = labelling.find_images(root)[0]
    readonly.chmod(0o444)
    return root


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("option", ["--json", "--csv", "--html"])
def test_an_output_naming_a_photo_is_refused_and_the_photo_kept(photos: Path, option: str, capsys) -> None:
    before = _digests(photos)
    for photo in (labelling.find_images(photos)[0], labelling.find_images(photos)[-1]):  # read-only and writable
        code = find.main([str(photos), "--method", "phash", "--no-progress", option, str(photo)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"{option} {photo}: is one of the input photos" in err and err.count("\n") == 1
    assert _digests(photos) == before
    # --overwrite never extends to photos
    assert find.main([str(photos), "--method", "phash", "--no-progress", "--overwrite", option, str(photo)]) == 2
    assert _digests(photos) == before


def test_a_new_image_name_inside_an_input_folder_is_refused(photos: Path, capsys) -> None:
    target = photos / "sub" / "report.PNG"
    assert find.main([str(photos), "--method", "phash", "--no-progress", "--json", str(target)]) == 2
    assert "has an image extension inside the input folder" in capsys.readouterr().err
    assert not target.exists()


def test_a_symlink_to_a_photo_is_refused(photos: Path, tmp_path: Path, capsys) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(labelling.find_images(photos)[1])
    before = _digests(photos)
    assert find.main([str(photos), "--method", "phash", "--no-progress", "--json", str(link)]) == 2
    assert "input photos" in capsys.readouterr().err
    assert _digests(photos) == before and link.is_symlink()


def test_a_foreign_file_needs_overwrite_and_our_own_files_do_not(photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    json_out, csv_out, html_out = out / "d.json", out / "d.csv", out / "d.html"
    json_out.write_text("my own notes\n")
    args = [str(photos), "--method", "phash", "--no-progress", "--json", str(json_out), "--csv", str(csv_out),
            "--html", str(html_out)]
    assert find.main(args) == 2
    err = capsys.readouterr().err
    assert f"--json {json_out}: exists and was not written by SameSpace; pass --overwrite" in err
    assert json_out.read_text() == "my own notes\n" and not csv_out.exists()
    assert find.main([*args, "--overwrite"]) == 0
    for path in (json_out, csv_out, html_out):
        assert outputs.is_ours(path), path  # each writer's output carries a signature outputs.py knows
    assert find.main(args) == 0  # running again over our own outputs needs no flag


def test_two_outputs_naming_one_path_are_an_error(photos: Path, tmp_path: Path, capsys) -> None:
    same = tmp_path / "x"
    assert find.main([str(photos), "--method", "phash", "--no-progress", "--json", str(same), "--csv",
                    str(tmp_path / "." / "x")]) == 2
    assert f"--json and --csv both name {same}" in capsys.readouterr().err
    assert not same.exists()


def test_bad_locations_are_one_line_before_any_work(photos: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the outputs were checked")

    monkeypatch.setattr(batch_decoding, "decoded_batches", no_decoding)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = {
        str(tmp_path): "is a folder, expected a file name",
        str(tmp_path / "missing" / "d.json"): "does not exist",
        str(a_file / "d.json"): "is not a folder",
        str(tmp_path / ("n" * 250 + ".json")): "file name too long",
    }
    for target, words in cases.items():
        assert find.main([str(photos), "--method", "phash", "--no-progress", "--json", target]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, (target, err)


def test_a_read_only_folder_is_refused(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anyway: simulate the file system refusing the probe file
        real = outputs.tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):  # noqa: A002 - mkstemp's own keyword
            if Path(dir) == folder:
                raise PermissionError(13, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
    else:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(outputs.OutputError, match=r"--json .*: cannot write in .*ro \(Permission denied\)"):
        outputs.check_outputs([outputs.Target("--json", folder / "d.json")])
    with pytest.raises(outputs.OutputError, match="cannot write in"):
        outputs.check_outputs([outputs.Target("--plots", folder / "plots", is_dir=True)])
    folder.chmod(0o755)


def test_folder_outputs_check_their_files(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "roc.csv").write_bytes(b"somebody else's notes")
    target = outputs.Target("--plots", plots, is_dir=True, members=("roc.csv", "precision_recall.png"))
    with pytest.raises(outputs.OutputError, match="roc.csv: exists and was not written by SameSpace"):
        outputs.check_outputs([target])
    outputs.check_outputs([target], overwrite=True)
    (plots / "roc.csv").write_bytes(b"\x89PNG\r\n\x1a\n somebody else's image")  # an image is never replaced
    with pytest.raises(outputs.OutputError, match="roc.csv: is a photo; photos are never overwritten"):
        outputs.check_outputs([target], overwrite=True)
    (plots / "roc.csv").unlink()
    (plots / "precision_recall.png").write_bytes(b"not an image, but named like one")
    with pytest.raises(outputs.OutputError, match="precision_recall.png: is a photo"):
        outputs.check_outputs([target], overwrite=True)
    (plots / "precision_recall.png").unlink()
    new = outputs.Target("--plots", tmp_path / "new" / "plots", is_dir=True, members=("roc.png",))
    outputs.check_outputs([new])  # a folder the command will create: its files need no existing folder
    assert not (tmp_path / "new").exists()
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(outputs.OutputError, match="is a file, expected a folder"):
        outputs.check_outputs([outputs.Target("--plots", a_file, is_dir=True)])
    with pytest.raises(outputs.OutputError, match="both name"):
        outputs.check_outputs([target, outputs.Target("--json", plots / "roc.csv")], overwrite=True)


def test_model_inference_checks_its_outputs_before_loading_anything(test_dir: Path, tmp_path: Path, capsys,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr(checkpoint_loading, "load_model", lambda *a, **k: pytest.fail("loaded the checkpoint first"))
    split = tmp_path / "split"
    shutil.copytree(test_dir, split)
    photo = labelling.find_images(split)[0]
    before = _digests(split)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    base = ["--checkpoint", str(tmp_path), "--data-dir", str(split), "--cache-dir", "none"]
    cases = [
        (["--scores", str(photo)], f"--scores {photo}: is one of the input photos"),
        (["--json", str(photo)], f"--json {photo}: is one of the input photos"),
        (["--scores", str(tmp_path / "missing" / "s.csv")], "does not exist"),
        (["--plots", str(a_file)], f"--plots {a_file}: is a file, expected a folder"),
        (["--json", str(tmp_path / "r.json"), "--scores", str(tmp_path / "r.json")], "both name"),
        (["--json", str(a_file)], "exists and was not written by SameSpace; pass --overwrite"),
    ]
    for extra, words in cases:
        assert evaluate.main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, (extra, err)
    assert _digests(split) == before and a_file.read_text() == "x"


def test_an_unwritable_feature_cache_is_a_warning_not_a_failure(test_dir: Path, tmp_path: Path) -> None:
    from samespace.backbones import build_feature_extractor
    from samespace.feature_cache import extract_features

    a_file = tmp_path / "file"
    a_file.write_text("x")
    extractor = build_feature_extractor("efficientnet_lite0", "none")
    images = np.stack([decoding.load_image(p) for p in labelling.find_images(test_dir)[:2]])
    with pytest.warns(UserWarning, match=f"feature cache not written: {a_file}/"):
        features = extract_features(extractor, images, variants=(0,), progress=False, cache_dir=a_file / "cache")
    assert features.shape == (2, 1, extractor.out_dim) and a_file.read_text() == "x"
