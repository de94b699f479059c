"""find_duplicates.py and report.py: copies found, distinct photos apart, outputs, skipped files, read-only."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import shutil
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samespace import (
    checkpoint_loading,
    content_keys,
    decoding,
    evaluation,
    finder,
    matching,
    model_scorer,
    outputs,
    photo_files,
    report,
    result_formats,
    scorers,
    scoring_methods,
    tiers,
)
from samespace.commands import find

# Four photos of four different rooms (one per room type) from the conftest sample set, chosen so that no
# two of them reach the default threshold of any reference method (checked in test_distinct_*).
ORIGINALS = {
    "A": "bathroom/austin_10900557_1.jpg",
    "B": "bedroom/austin_10910342_1.jpg",
    "C": "kitchen/boston_10912508_1.jpg",
    "D": "living-room/austin_10918936_1.jpg",
}
# Expected duplicate groups of the photos folder, by file name.
EXPECTED_GROUPS = [{"A.jpg", "A_copy.jpg", "A_small.png"}, {"B.jpg", "B_q35.jpg"}]
UNREADABLE = {"empty.jpg", "notes.jpg"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, test_dir: Path) -> Path:
    """A: original, exact byte copy, half-size PNG copy; B: original, JPEG q35 re-encode; C (WebP), D alone;
    plus a zero-byte .jpg, a text file named .jpg and a .txt file (not an image: ignored)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub" / "deeper").mkdir(parents=True)
    for name, rel in ORIGINALS.items():
        shutil.copyfile(test_dir / rel, root / f"{name}.jpg")
    (root / "C.jpg").unlink()
    with Image.open(test_dir / ORIGINALS["C"]) as img:
        img.save(root / "sub" / "C.webp", "WEBP", quality=90)
    shutil.copyfile(root / "A.jpg", root / "sub" / "A_copy.jpg")
    with Image.open(root / "A.jpg") as img:
        img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save(
            root / "sub" / "deeper" / "A_small.png"
        )
    with Image.open(root / "B.jpg") as img:
        img.save(root / "sub" / "B_q35.jpg", "JPEG", quality=35)
    (root / "empty.jpg").write_bytes(b"")
    (root / "sub" / "notes.jpg").write_text("these are not the photos you are looking for\n")
    (root / "readme.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def cosine_extractor() -> torch.nn.Module:
    from samespace.backbones import build_feature_extractor

    return build_feature_extractor("efficientnet_lite0", "imagenet")


def _names(groups: list[np.ndarray], paths: list[str]) -> list[set[str]]:
    return [{Path(paths[k]).name for k in g} for g in groups]


def _run(folder: Path, scorer: scorers.PairScorer, threshold: float, **kwargs) -> finder.Result:
    return finder.find_duplicates([folder], scorer, threshold, progress=False, **kwargs)


def _tree_state(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under root: sha256, size, mtime (ns)."""
    return {
        p.relative_to(root).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_size,
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------
# Copies found, distinct photos apart
# --------------------------------------------------------------------------------------------


def test_image_files_any_pil_format_recursively(photos: Path) -> None:
    extensions = photo_files.readable_extensions()
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"} <= extensions
    assert not {".pdf", ".h5", ".txt", ".mpg"} & extensions
    found = [p.relative_to(photos).as_posix() for p in photo_files.image_files([photos, photos / "sub"])]
    assert found == [
        "A.jpg",
        "B.jpg",
        "D.jpg",
        "empty.jpg",
        "sub/A_copy.jpg",
        "sub/B_q35.jpg",
        "sub/C.webp",
        "sub/deeper/A_small.png",
        "sub/notes.jpg",
    ]  # sorted by relative path; the overlapping second folder adds nothing


@pytest.mark.parametrize("method", ["whash", "phash"])
def test_hash_methods_find_exact_resized_and_reencoded_copies(photos: Path, method: str) -> None:
    result = _run(photos, scorers.HashScorer(method), scoring_methods.DEFAULT_THRESHOLDS[method])
    assert _names(result.groups, result.paths) == EXPECTED_GROUPS
    assert result.summary["candidates"] == "exhaustive" and result.summary["pairs_scored"] == 7 * 6 // 2
    exact = [
        s
        for i, j, s in zip(result.left, result.right, result.scores, strict=True)
        if {Path(result.paths[i]).name, Path(result.paths[j]).name} == {"A.jpg", "A_copy.jpg"}
    ]
    assert exact == [1.0]


def test_cosine_finds_exact_resized_and_reencoded_copies(photos: Path, cosine_extractor: torch.nn.Module) -> None:
    result = _run(photos, scorers.CosineScorer(cosine_extractor), scoring_methods.DEFAULT_THRESHOLDS["cosine"])
    assert _names(result.groups, result.paths) == EXPECTED_GROUPS
    assert result.scores.min() > 0.9  # copies: well above the threshold
    assert result.scores.max() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", ["whash", "phash", "cosine"])
def test_distinct_photos_stay_below_every_default_threshold(
    photos: Path, method: str, cosine_extractor: torch.nn.Module
) -> None:
    scorer = scorers.CosineScorer(cosine_extractor) if method == "cosine" else scorers.HashScorer(method)
    scorer.add(np.stack([decoding.load_image(photos / f"{name}.jpg") for name in "ABD"]))
    scorer.finish()
    left, right = matching.upper_pairs(0, 3, 3)
    assert scorer.score(left, right).max() < scoring_methods.DEFAULT_THRESHOLDS[method]


@pytest.mark.parametrize("method", ["phash", "cosine"])
def test_top_k_candidates_give_the_exhaustive_groups(
    sample_root: Path, method: str, cosine_extractor: torch.nn.Module
) -> None:
    folder = sample_root / "Test Data"
    make = (
        (lambda: scorers.CosineScorer(cosine_extractor)) if method == "cosine" else (lambda: scorers.HashScorer(method))
    )
    threshold = scoring_methods.DEFAULT_THRESHOLDS[method]
    full = _run(folder, make(), threshold, exhaustive=True)
    knn = _run(folder, make(), threshold, top_k=3)
    assert full.summary["candidates"] == "exhaustive" and knn.summary["candidates"] == "top-3"
    assert knn.summary["pairs_scored"] < full.summary["pairs_scored"]
    assert len(full.groups) >= 3
    assert [g.tolist() for g in knn.groups] == [g.tolist() for g in full.groups]


def test_model_path_runs_from_an_in_memory_network(photos: Path) -> None:
    from samespace.siamese import SiameseNetwork

    torch.manual_seed(0)
    model = SiameseNetwork(backbone_weights="none")
    result = _run(photos, model_scorer.ModelScorer(model, batch_size=4), threshold=0.0)
    assert result.summary["method"] == "model" and result.summary["candidates"] == "exhaustive"
    assert len(result.groups) == 1 and len(result.groups[0]) == 7  # threshold 0: everything is one group
    assert len(result.left) == result.summary["pairs_scored"] == 21
    knn = _run(photos, model_scorer.ModelScorer(model, batch_size=4), threshold=0.0, top_k=2)
    assert knn.summary["candidates"] == "top-2" and knn.summary["pairs_scored"] < 21
    np.testing.assert_array_equal(result.scores >= 0, True)


# --------------------------------------------------------------------------------------------
# The command: outputs, skipped files, read-only, errors
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One command-line run (whash) writing JSON, CSV and HTML; the photos' state before and after."""
    out = tmp_path_factory.mktemp("out")
    before = _tree_state(photos)
    argv = [str(photos), "--method", "whash", "--no-progress"]
    argv += ["--json", str(out / "d.json"), "--csv", str(out / "d.csv"), "--html", str(out / "d.html")]
    code = find.main(argv)
    return {"code": code, "out": out, "before": before, "after": _tree_state(photos)}


def test_photos_are_byte_for_byte_unchanged(cli_run: dict) -> None:
    assert cli_run["code"] == 0
    assert cli_run["after"] == cli_run["before"]  # same files, same bytes, same mtimes; nothing added


def test_json_has_exactly_the_documented_shape(cli_run: dict, photos: Path) -> None:
    doc = json.loads((cli_run["out"] / "d.json").read_text())
    assert set(doc) == {"groups", "pairs", "blank", "skipped", "summary"} and doc["blank"] == []
    assert [{Path(m).name for m in g["members"]} for g in doc["groups"]] == EXPECTED_GROUPS
    for group in doc["groups"]:
        assert set(group) == {"members", "pairs", "keys"}
        assert group["keys"] == [content_keys.content_key(m) for m in group["members"]]
        for a, b, s, tier in group["pairs"]:
            assert isinstance(a, str) and isinstance(b, str) and isinstance(s, float) and tier in tiers.TIERS
            assert a in group["members"] and b in group["members"] and s >= scoring_methods.DEFAULT_THRESHOLDS["whash"]
    assert sorted(map(tuple, doc["pairs"])) == sorted(tuple(p) for g in doc["groups"] for p in g["pairs"])
    assert len(doc["pairs"]) == 3 + 1  # A: 3 pairs, B: 1 pair
    assert [p[2] for p in doc["pairs"]] == sorted((p[2] for p in doc["pairs"]), reverse=True)
    summary = doc["summary"]
    assert {k: summary[k] for k in ("files", "images", "skipped", "pairs_scored", "duplicate_pairs", "groups")} == {
        "files": 9,
        "images": 7,
        "skipped": 2,
        "pairs_scored": 21,
        "duplicate_pairs": 4,
        "groups": 2,
    }
    assert summary["method"] == "whash" and summary["threshold"] == scoring_methods.DEFAULT_THRESHOLDS["whash"]
    assert summary["seconds"] > 0 and set(summary["timings"]) >= {"decode_wait", "embed", "pairs", "group"}


def test_skipped_files_reported_with_the_reason(cli_run: dict) -> None:
    doc = json.loads((cli_run["out"] / "d.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in doc["skipped"]}
    assert set(skipped) == UNREADABLE  # readme.txt is not an image file: not looked at
    assert all("cannot read image" in reason for reason in skipped.values())


def test_csv_lists_every_duplicate_pair(cli_run: dict) -> None:
    doc = json.loads((cli_run["out"] / "d.json").read_text())
    with open(cli_run["out"] / "d.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["group", "path1", "path2", "score", "tier"]
    assert sorted((r["path1"], r["path2"], round(float(r["score"]), 6), r["tier"]) for r in rows) == sorted(
        map(tuple, doc["pairs"])
    )
    assert {r["group"] for r in rows} == {"1", "2"}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []  # tag, attribute, value
        self.text: list[str] = []
        self.open: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.policy = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in ("img", "meta", "br", "link", "input"):
            self.open.append(tag)
        self.urls += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "data", "action")]
        if tag == "script":
            self.scripts.append(dict(attrs))
        if tag == "meta" and dict(attrs).get("http-equiv") == "Content-Security-Policy":
            self.policy = dict(attrs).get("content") or ""

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, text: str) -> None:
        self.text.append(text)


def test_html_is_self_contained_and_embeds_every_group_member(cli_run: dict) -> None:
    page = (cli_run["out"] / "d.html").read_text()
    doc = json.loads((cli_run["out"] / "d.json").read_text())
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.open == [] and parser.tags[0] == "html"
    assert not {"link", "iframe", "object", "form"} & set(parser.tags)
    # Inline scripts only: the page's data (not run) and the one script the policy allows by its hash
    assert parser.scripts == [{"type": "application/json", "id": "samespace-data"}, {}]
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert parser.policy.startswith("default-src 'none'; img-src data:;")
    assert f"script-src 'sha256-{digest}';" in parser.policy and "connect-src" not in parser.policy
    assert "url(" not in page and "@import" not in page  # no external CSS resources
    images = [v for tag, k, v in parser.urls if tag == "img"]
    assert all(k == "src" for tag, k, _ in parser.urls)  # no href anywhere
    members = [m for g in doc["groups"] for m in g["members"]]
    assert len(images) == len(members) == 5
    for uri in images:
        assert uri.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= max(report.THUMB_BOX)
    text = " ".join(parser.text)
    assert all(Path(m).name in text for m in members)
    assert "Group 1" in text and "3 photos" in text and "Group 2" in text
    assert text.index("Group 1") < text.index("Group 2")


def test_summary_line_on_stdout(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert find.main([str(photos), "--method", "phash", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("7 images, 2 skipped, 21 pairs scored (exhaustive), 4 duplicate pairs in 2 groups")
    assert "group 1 (3 photos)" in lines  # without output files, the groups are printed


def test_empty_folder_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error line says it: no warning repeats it
        code = find.main([str(empty), "--method", "whash", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no image files found in {empty} (looked") and err.count("\n") == 1
    assert find.main([str(tmp_path / "missing"), "--method", "whash"]) != 0
    assert f"{tmp_path / 'missing'}: not a directory" in capsys.readouterr().err


def test_hidden_files_and_thumbnail_folders_are_left_out_and_counted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A NAS's or file manager's thumbnails beside the photos would pair with their originals: left out by
    default (counted on a closing line and in the summary), scanned with --include-hidden."""
    rng = np.random.default_rng(3)
    photo = Image.fromarray(np.kron(rng.random((12, 16, 3)) * 255, np.ones((16, 16, 1))).astype(np.uint8))
    photo.save(tmp_path / "IMG_1.png")
    Image.fromarray(np.kron(rng.random((12, 16, 3)) * 255, np.ones((16, 16, 1))).astype(np.uint8)).save(
        tmp_path / "IMG_2.png")
    for thumbnail in (".thumbnails/normal/IMG_1.png", "@eaDir/IMG_1.png/SYNOFILE_THUMB_M.png",
                      "__MACOSX/IMG_1.png"):
        (tmp_path / thumbnail).parent.mkdir(parents=True)
        photo.resize((64, 48)).save(tmp_path / thumbnail)
    (tmp_path / "._IMG_1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    hidden = []
    assert photo_files.image_files([tmp_path], [], hidden=hidden) == [tmp_path / "IMG_1.png", tmp_path / "IMG_2.png"]
    assert sorted(p.name for p in hidden) == ["._IMG_1.png", ".thumbnails", "@eaDir", "__MACOSX"]
    assert len(photo_files.image_files([tmp_path], [], include_hidden=True)) == 6

    out = tmp_path.parent / f"{tmp_path.name}-out.json"
    assert find.main([str(tmp_path), "--method", "phash", "--no-progress", "--no-cache", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == result_formats.hidden_line(4) and "left out 4 hidden files and folders" in lines[-2]
    doc = json.loads(out.read_text())
    assert doc["groups"] == [] and doc["skipped"] == [] and doc["summary"]["hidden"] == 4
    assert find.main([str(tmp_path), "--method", "phash", "--no-progress", "--no-cache", "--json", str(out),
                      "--include-hidden"]) == 0
    doc = json.loads(out.read_text())
    assert doc["summary"]["hidden"] == 0 and [len(g["members"]) for g in doc["groups"]] == [4]  # IMG_1 + 3 thumbs
    assert [s["path"] for s in doc["skipped"]] == [str(tmp_path / "._IMG_1.png")]


def test_only_unreadable_files_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert find.main([str(tmp_path), "--method", "phash", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "none of the 1 image files" in err and "broken.png" in err


def test_outputs_are_replaced_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    outputs.atomic_write(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


def test_atomic_write_streams_a_writer_and_keeps_the_old_file_if_it_fails(tmp_path: Path) -> None:
    target = tmp_path / "table.bin"
    outputs.atomic_write(target, lambda f: f.write(b"abc") and f.write(b"def"))  # e.g. torch.save(table, f)
    assert target.read_bytes() == b"abcdef"

    def fails(f) -> None:  # noqa: ANN001
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        outputs.atomic_write(target, fails)
    assert target.read_bytes() == b"abcdef"  # the old file, no partial write
    assert [p.name for p in tmp_path.iterdir()] == ["table.bin"]


def test_checkpoint_threshold_file_is_the_model_default(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:

    from samespace.siamese import SiameseNetwork

    torch.manual_seed(0)
    network = SiameseNetwork(backbone_weights="none").eval()
    loaded = []

    def load_model(checkpoint_dir: str, device: str = "cpu") -> torch.nn.Module:
        loaded.append((checkpoint_dir, device))
        return network

    monkeypatch.setattr(checkpoint_loading, "load_model", load_model)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / scoring_methods.THRESHOLD_FILE).write_text(json.dumps({"threshold": 0.25, "metric": "best_f1"}))
    out = tmp_path / "d.json"
    argv = [str(photos), "--checkpoint", str(checkpoint), "--device", "cpu", "--no-progress", "--json", str(out)]
    assert find.main(argv) == 0
    summary = json.loads(out.read_text())["summary"]
    assert loaded == [(str(checkpoint), "cpu")]
    assert summary["method"] == "model" and summary["threshold"] == 0.25
    assert summary["threshold_source"] == str(checkpoint / scoring_methods.THRESHOLD_FILE)
    assert find.main([*argv, "--threshold", "0.75"]) == 0
    assert json.loads(out.read_text())["summary"]["threshold"] == 0.75
    (checkpoint / scoring_methods.THRESHOLD_FILE).unlink()
    assert find.main(argv) == 0
    assert json.loads(out.read_text())["summary"]["threshold"] == scoring_methods.MODEL_DEFAULT_THRESHOLD
    capsys.readouterr()


def test_option_conflicts_are_usage_errors(photos: Path) -> None:
    for argv in (
        ["--method", "whash", "--backbone", "mobilenet_v3_large"],
        ["--checkpoint", "x", "--method", "phash"],
        ["--checkpoint", "x", "--backbone-weights", "none"],
        ["--top-k", "5", "--exhaustive"],
        ["--top-k", "0"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            find.main([str(photos), *argv])
        assert exit_info.value.code == 2


@pytest.mark.slow
def test_checkpoint_scores_equal_model_inference_scores(trained_checkpoint: Path, test_dir: Path) -> None:
    """find_duplicates.py --checkpoint and model_inference.py score every pair with the same function (the finder
    reports a pair its pixels show to be one photo with the copy score instead: tiers.tiered_scores)."""

    scorer = model_scorer.ModelScorer(checkpoint_loading.load_model(trained_checkpoint))
    result = _run(test_dir, scorer, threshold=0.0, exhaustive=True)
    assert len(result.tiers) == len(result.left)
    model_scores = scorer.score(result.left, result.right)
    np.testing.assert_allclose(result.scores, tiers.tiered_scores(model_scores, result.tiers))
    pairs = zip(result.left, result.right, model_scores, strict=True)
    found = {(result.paths[i], result.paths[j]): s for i, j, s in pairs}
    _, unique = evaluation.evaluate(
        checkpoint_loading.load_model(trained_checkpoint), test_dir, pairing="unique", methods=["model"], progress=False
    )
    expected = {
        (str(unique["paths"][i]), str(unique["paths"][j])): s
        for i, j, s in zip(unique["left"], unique["right"], unique["scores"]["model"], strict=True)
    }
    assert found.keys() == expected.keys()
    np.testing.assert_allclose([found[k] for k in expected], list(expected.values()), atol=1e-6)


def test_the_listing_shows_1_0000_for_copies_only() -> None:
    """A re-shoot reports at most 0.999999 (tiers.tiered_scores): cut, not rounded, it never reads as a copy's 1."""
    document = {"groups": [{"members": ["a.jpg", "b.jpg", "c.jpg"],
                            "pairs": [["a.jpg", "b.jpg", 1.0, tiers.SAME_PHOTO],
                                      ["a.jpg", "c.jpg", 0.999999, tiers.SAME_SPACE],
                                      ["b.jpg", "c.jpg", 0.35, tiers.SAME_SPACE]]}], "skipped": []}
    scores = [line.split()[0] for line in result_formats.groups_text(document).splitlines()[4:]]
    assert scores == ["1.0000", "0.9999", "0.3500"]
