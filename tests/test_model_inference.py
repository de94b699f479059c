"""model_inference.py on a checkpoint trained for 100 batches on the sample set."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics

from samespace import (
    checkpoint_loading,
    decoding,
    evaluation,
    labelling,
    outputs,
    pair_dataset,
    pair_sampling,
    scoring_methods,
)
from samespace.commands import evaluate

pytestmark = pytest.mark.slow  # trains, runs several processes or installs packages


@pytest.fixture(scope="module")
def evaluated(trained_checkpoint: Path, test_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One CLI run with every output, on a copy of the checkpoint (the run writes its threshold file)."""
    out = tmp_path_factory.mktemp("inference")
    checkpoint = out / "checkpoint"
    shutil.copytree(trained_checkpoint, checkpoint)
    args = ["--checkpoint", str(checkpoint), "--data-dir", str(test_dir), "--json", str(out / "report.json"),
            "--scores", str(out / "scores.csv"), "--plots", str(out / "plots"), "--device", "cpu",
            "--cache-dir", "none", "--write-threshold"]
    assert evaluate.main(args) == 0
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"out": out, "checkpoint": checkpoint, "report": json.loads((out / "report.json").read_text()), "rows": rows}


def test_json_keys_and_ranges(evaluated: dict, test_dir: Path) -> None:
    report = evaluated["report"]
    n = len(labelling.find_images(test_dir))
    assert report["images"] == n and report["skipped"] == []
    faithful = report["faithful"]
    summary = pair_dataset.DuplicateImageDataset(test_dir, progress=False).summary()
    assert faithful["pairs"] == summary["total_pairs"]
    assert faithful["positive_pairs"] == summary["upsampled_positive_pairs"]
    assert 0 < faithful["loss"] < 5 and 0 <= faithful["accuracy"] <= 1
    unique = report["unique"]
    assert unique["pairs"] == n * (n - 1) // 2
    groups = labelling.group_ids(labelling.find_images(test_dir), test_dir)
    assert unique["positive_pairs"] == pair_sampling.count_pairs(groups, "unique")[0]
    assert set(unique["methods"]) == {"model", "whash", "phash", "cosine", "relative", "verified", "calibrated"}
    for method in unique["methods"].values():
        assert 0 <= method["roc_auc"] <= 1 and 0 <= method["average_precision"] <= 1
        for point in (method["at_default"], method["best_f1"]):
            assert set(point) == {"threshold", "f1", "precision", "recall"}
            assert all(0 <= point[k] <= 1 for k in ("f1", "precision", "recall"))
    assert sorted(p.name for p in (evaluated["out"] / "plots").iterdir()) == ["precision_recall.png", "roc.png"]
    out = evaluated["out"]
    for path in (out / "report.json", out / "scores.csv", *(out / "plots").iterdir()):
        assert outputs.is_ours(path), path  # so a second run over the same outputs needs no --overwrite


def test_metrics_agree_with_scikit_learn_on_the_scores_file(evaluated: dict) -> None:
    rows = evaluated["rows"]
    assert len(rows) == evaluated["report"]["unique"]["pairs"]
    labels = np.array([int(r["label"]) for r in rows])
    for name, reported in evaluated["report"]["unique"]["methods"].items():
        scores = np.array([float(r[name]) for r in rows])  # 6 decimals in the file
        assert reported["roc_auc"] == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-4)
        assert reported["average_precision"] == pytest.approx(metrics.average_precision_score(labels, scores), abs=1e-3)
        f1 = metrics.f1_score(labels, scores >= reported["best_f1"]["threshold"])
        assert reported["best_f1"]["f1"] == pytest.approx(f1, abs=1e-3)
        assert reported["best_f1"]["f1"] >= reported["at_default"]["f1"] - 1e-9
        default = (
            scoring_methods.MODEL_DEFAULT_THRESHOLD if name == "model" else scoring_methods.DEFAULT_THRESHOLDS[name]
        )
        assert reported["at_default"]["threshold"] == default
        assert reported["at_default"]["f1"] == pytest.approx(metrics.f1_score(labels, scores >= default), abs=1e-3)


def test_threshold_file_is_written_for_find_duplicates(evaluated: dict) -> None:
    threshold, source = checkpoint_loading.model_threshold(evaluated["checkpoint"])
    assert threshold == evaluated["report"]["unique"]["methods"]["model"]["best_f1"]["threshold"]
    assert source.endswith(scoring_methods.THRESHOLD_FILE)


def test_two_runs_give_identical_numbers(evaluated: dict, trained_checkpoint: Path, test_dir: Path) -> None:
    network = checkpoint_loading.load_model(trained_checkpoint)
    report, _ = evaluation.evaluate(network, test_dir, progress=False)
    assert report == json.loads(json.dumps(report)) and report["faithful"] == evaluated["report"]["faithful"]
    assert report["unique"] == evaluated["report"]["unique"]


def test_model_score_averages_both_input_orders(trained_checkpoint: Path, test_dir: Path) -> None:
    network = checkpoint_loading.load_model(trained_checkpoint)
    images, _, _ = decoding.load_images(labelling.find_images(test_dir)[:6], progress=False)
    from samespace.feature_cache import extract_features

    pooled = extract_features(network.features, images, variants=(0,), progress=False)[:, 0]
    left, right = np.triu_indices(6, k=1)
    scores = evaluation.unique_scores(network, pooled, images, left, right, ["model"])["model"]
    with torch.no_grad():
        ab = network.logits_from_features(pooled[left], pooled[right])
        ba = network.logits_from_features(pooled[right], pooled[left])
    assert not torch.allclose(ab, ba)  # the head is not symmetric, so the average matters
    np.testing.assert_allclose(scores, torch.sigmoid((ab + ba) / 2).numpy(), atol=1e-5)


def test_reference_methods_rank_an_exact_duplicate_first(
    trained_checkpoint: Path, test_dir: Path, tmp_path: Path
) -> None:
    split = tmp_path / "split"
    shutil.copytree(test_dir, split)
    original = labelling.find_images(split)[0]
    shutil.copy(original, original.with_name("zz_copy.jpg"))  # unparsed name: its own group, so label 0
    network = checkpoint_loading.load_model(trained_checkpoint)
    _, unique = evaluation.evaluate(network, split, pairing="unique", progress=False)
    names = [p.name for p in unique["paths"]]
    copy_pair = {names.index(original.name), names.index("zz_copy.jpg")}
    for method in ("whash", "phash", "cosine"):
        scores = unique["scores"][method]
        top = int(np.argmax(scores))
        assert {int(unique["left"][top]), int(unique["right"][top])} == copy_pair, method
        assert scores[top] == pytest.approx(1.0, abs=1e-6)


def test_errors_name_the_path(trained_checkpoint: Path, tmp_path: Path, test_dir: Path, capsys) -> None:
    not_checkpoint = tmp_path / "empty"
    not_checkpoint.mkdir()
    assert evaluate.main(["--checkpoint", str(not_checkpoint), "--data-dir", str(test_dir)]) == 2
    assert f"{not_checkpoint}: not a SameSpace checkpoint" in capsys.readouterr().err

    no_positives = tmp_path / "singles"
    (no_positives / "bedroom").mkdir(parents=True)
    paths = labelling.find_images(test_dir)
    _, first_of_each_room = np.unique(labelling.group_ids(paths, test_dir), return_index=True)
    for k in first_of_each_room[:3]:
        shutil.copy(paths[k], no_positives / "bedroom" / paths[k].name)
    assert evaluate.main(["--checkpoint", str(trained_checkpoint), "--data-dir", str(no_positives)]) == 2
    assert f"{no_positives}: no duplicate pairs" in capsys.readouterr().err

    missing = tmp_path / "missing"
    assert evaluate.main(["--checkpoint", str(trained_checkpoint), "--data-dir", str(missing)]) == 2
    assert f"{missing}: not a directory" in capsys.readouterr().err


def _room_split(test_dir: Path, folder: Path, rooms: int) -> Path:
    """A split of the first ``rooms`` rooms of test_dir that have at least three photos."""
    paths = labelling.find_images(test_dir)
    groups = labelling.group_ids(paths, test_dir)
    big = [g for g in dict.fromkeys(groups.tolist()) if (groups == g).sum() >= 3][:rooms]
    for path, g in zip(paths, groups, strict=True):
        if g in big:
            (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.parent.name / path.name)
    return folder


def test_one_room_is_refused_and_the_calibrated_threshold_kept(evaluated: dict, test_dir: Path, tmp_path: Path,
                                                               capsys) -> None:
    one_room = _room_split(test_dir, tmp_path / "one-room", 1)
    threshold_file = evaluated["checkpoint"] / scoring_methods.THRESHOLD_FILE
    before = threshold_file.read_bytes()
    base = ["--checkpoint", str(evaluated["checkpoint"]), "--device", "cpu", "--cache-dir", "none"]
    for extra in ([], ["--write-threshold"]):
        assert evaluate.main([*base, "--data-dir", str(one_room), *extra]) == 2
        err = capsys.readouterr().err
        assert f"{one_room}: " in err and err.count("\n") == 1
    assert threshold_file.read_bytes() == before
    assert evaluate.main([*base, "--data-dir", str(one_room)]) == 2
    assert "no non-duplicate pairs" in capsys.readouterr().err

    two_rooms = _room_split(test_dir, tmp_path / "two-rooms", 2)
    assert evaluate.main([*base, "--data-dir", str(two_rooms), "--write-threshold"]) == 2
    minimum = scoring_methods.MIN_CALIBRATION_PAIRS
    assert f"--write-threshold needs at least {minimum} of each" in capsys.readouterr().err
    assert threshold_file.read_bytes() == before


def test_the_threshold_is_written_only_when_asked_and_a_replacement_is_said(
    evaluated: dict, test_dir: Path, tmp_path: Path, cache_dir: Path, capsys
) -> None:
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(evaluated["checkpoint"], checkpoint)
    threshold_file = checkpoint / scoring_methods.THRESHOLD_FILE
    before = threshold_file.read_bytes()
    previous = json.loads(before)
    other = shutil.copytree(test_dir, tmp_path / "another copy")  # same photos, another folder
    args = ["--checkpoint", str(checkpoint), "--data-dir", str(other), "--pairing", "unique", "--methods", "model",
            "--device", "cpu", "--cache-dir", str(cache_dir)]
    assert evaluate.main(args) == 0
    assert threshold_file.read_bytes() == before  # evaluating never touches the threshold without the flag
    assert evaluate.main([*args, "--write-threshold"]) == 0
    out = capsys.readouterr().out
    assert f"replaced threshold {previous['threshold']:.4f} calibrated on {previous['data_dir']}" in out
    assert json.loads(threshold_file.read_text())["data_dir"] == str(other)
