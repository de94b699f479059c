"""What samespace evaluate and find --checkpoint refuse, and how their results read: a dataset root given as a split,
a batch size under 1, a checkpoint at odds with itself, a loose threshold file, a checkpoint path that is not a
folder; the evaluation table's columns, the summary line's singular counts, the documented --methods."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import model_def
import model_inference
from samespace import checkpoint_loading, evaluation, result_formats, scoring_methods
from samespace.commands import evaluate, find
from samespace.siamese import SiameseNetwork

REPO = Path(__file__).resolve().parent.parent
HPARAMS = {
    **{k: v["val"] if isinstance(v, dict) else v for k, v in yaml.safe_load(
        (Path(model_def.__file__).parent / "const.yaml").read_text())["hyperparameters"].items()},
    "backbone": "efficientnet_lite0",
}


def write_checkpoint(folder: Path, hparams: dict) -> Path:
    """A checkpoint folder as model_def.py writes it, with random Lite0 weights of the untied network."""
    torch.manual_seed(0)
    network = SiameseNetwork(backbone="efficientnet_lite0", backbone_weights="none")
    folder.mkdir(parents=True)
    load_data = {"trial_type": "PyTorchTrial", "hparams": hparams, "trial_cls_spec": "model_def:SiameseTrial"}
    (folder / "load_data.json").write_text(json.dumps(load_data))
    torch.save({"models_state_dict": [network.state_dict()]}, folder / "state_dict.pth")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "ok", HPARAMS)


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """A split of three photos by name: two of one room, one of another (both classes; nothing is decoded)."""
    folder = tmp_path / "split" / "bedroom"
    folder.mkdir(parents=True)
    for k, name in enumerate(("austin_1_1.jpg", "austin_1_2.jpg", "austin_2_1.jpg")):
        Image.new("RGB", (32, 24), (40 * k, 80, 120)).save(folder / name)
    return folder.parent


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr of a refused command: exactly one ``error:`` line, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err.rstrip("\n")


# --------------------------------------------------------------------------------------------
# --data-dir is one split
# --------------------------------------------------------------------------------------------


def test_a_dataset_root_is_refused_naming_its_test_split(sample_root: Path, tmp_path: Path, capsys) -> None:
    bare = tmp_path / "checkpoint"  # never loaded: the data folder is refused first
    bare.mkdir()
    expected = (f"error: {sample_root}: holds the dataset's split folders ('Training Data', 'Test Data'); evaluate "
                f"one split, e.g. '{sample_root / 'Test Data'}'")
    for extra in ([], ["--write-threshold"]):
        assert evaluate.main(["--checkpoint", str(bare), "--data-dir", str(sample_root), *extra]) == 2
        assert error_line(capsys) == expected
    assert model_inference.main(["--checkpoint", str(bare), "--data-dir", str(sample_root)],
                                prog="model_inference.py") == 2
    assert error_line(capsys) == expected
    assert not (bare / scoring_methods.THRESHOLD_FILE).exists()


def test_the_library_refuses_a_dataset_root_too(tmp_path: Path) -> None:
    (tmp_path / "Training Data").mkdir()
    with pytest.raises(evaluation.EvaluationError, match=re.escape(
            f"{tmp_path}: holds the dataset's split folders ('Training Data'); evaluate one split, e.g. "
            f"'{tmp_path / 'Training Data'}'")):
        evaluation.evaluate(None, tmp_path)  # type: ignore[arg-type]  # refused before the model is used
    with pytest.raises(evaluation.EvaluationError, match="holds the dataset's split folders"):
        evaluation.check_split(tmp_path)


# --------------------------------------------------------------------------------------------
# --batch-size
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_batch_size_under_one_is_a_usage_error(value: str, split: Path, checkpoint: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", str(checkpoint), "--data-dir", str(split), "--batch-size", value])
    assert exit_info.value.code == 2
    assert error_line(capsys) == (f"error: argument --batch-size: '{value}': expected a whole number >= 1 "
                                  "(see samespace evaluate --help)")


def test_the_library_refuses_a_batch_size_under_one(split: Path) -> None:
    with pytest.raises(evaluation.EvaluationError, match=r"^batch size 0: must be positive$"):
        evaluation.evaluate(None, split, batch_size=0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# A checkpoint whose load_data.json does not build the network its weights are for
# --------------------------------------------------------------------------------------------


def test_an_inconsistent_checkpoint_is_named_without_training_options(split: Path, tmp_path: Path, capsys) -> None:
    assert HPARAMS.get("tie_twins") is False
    folder = write_checkpoint(tmp_path / "inconsistent", {**HPARAMS, "tie_twins": True})
    expected = (f"error: {folder / 'load_data.json'}: its hyperparameters do not match the model in state_dict.pth "
                "(weights unexpected twins.1.0.bias, twins.1.0.weight): the checkpoint is inconsistent; give a folder "
                "as model_def.py or model_download.py wrote it")
    photos = tmp_path / "photos"
    photos.mkdir()
    assert find.main([str(photos), "--checkpoint", str(folder), "--no-progress", "--no-cache"]) == 2
    assert error_line(capsys) == expected
    assert evaluate.main(["--checkpoint", str(folder), "--data-dir", str(split), "--cache-dir", "none"]) == 2
    assert error_line(capsys) == expected


# --------------------------------------------------------------------------------------------
# samespace_threshold.json
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, shown", [
    ('{"threshold": true}', "true"),
    ('{"threshold": "0.9"}', '"0.9"'),
    ('{"threshold": 7}', "7"),
    ('{"threshold": NaN}', "NaN"),
    ('{"threshold": null}', "null"),
])
def test_a_threshold_that_is_not_a_number_in_range_is_refused(text: str, shown: str, checkpoint: Path, tmp_path: Path,
                                                               capsys) -> None:
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    for name in ("load_data.json", "state_dict.pth"):
        (folder / name).symlink_to(checkpoint / name)
    path = folder / scoring_methods.THRESHOLD_FILE
    path.write_text(text)
    photos = tmp_path / "photos"
    photos.mkdir()
    assert find.main([str(photos), "--checkpoint", str(folder), "--no-progress", "--no-cache"]) == 2
    assert error_line(capsys) == f"error: {path}: threshold {shown}: expected a JSON number in [0, 1]"


def test_a_threshold_file_that_is_not_json_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / scoring_methods.THRESHOLD_FILE
    path.write_text("0.5 or so")
    with pytest.raises(checkpoint_loading.CheckpointError, match=re.escape(f'{path}: expected {{"threshold": ')):
        checkpoint_loading.read_threshold(tmp_path)
    path.write_text("[0.5]")
    with pytest.raises(checkpoint_loading.CheckpointError, match=re.escape(f'{path}: expected {{"threshold": ')):
        checkpoint_loading.read_threshold(tmp_path)


def test_a_threshold_that_is_a_json_number_in_range_is_read(tmp_path: Path) -> None:
    assert checkpoint_loading.read_threshold(tmp_path) is None
    path = tmp_path / scoring_methods.THRESHOLD_FILE
    for text, value in (('{"threshold": 0.8125}', 0.8125), ('{"threshold": 1}', 1.0), ('{"threshold": 0}', 0.0)):
        path.write_text(text)
        assert checkpoint_loading.read_threshold(tmp_path) == value


def test_writing_over_an_invalid_threshold_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / scoring_methods.THRESHOLD_FILE
    path.write_text(json.dumps({"threshold": True, "data_dir": "elsewhere"}))
    point = {"threshold": 0.75, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    report = {"data_dir": "split", "unique": {"pairs": 100, "positive_pairs": 40,
                                              "methods": {"model": {"best_f1": point}}}}
    assert evaluation.write_threshold(tmp_path, report) == (path, f"replaced an invalid threshold file {path}")
    assert checkpoint_loading.read_threshold(tmp_path) == 0.75


# --------------------------------------------------------------------------------------------
# A --checkpoint path that is missing or not a folder
# --------------------------------------------------------------------------------------------


def test_a_checkpoint_that_is_a_file_is_said_to_be_no_folder(split: Path, tmp_path: Path, capsys) -> None:
    regular = tmp_path / "model.pth"
    regular.write_bytes(b"weights")
    expected = (f"error: {regular}: not a folder (give the checkpoint folder that model_def.py printed or "
                "model_download.py downloaded)")
    assert find.main([str(split), "--checkpoint", str(regular), "--no-progress", "--no-cache"]) == 2
    assert error_line(capsys) == expected
    assert evaluate.main(["--checkpoint", str(regular), "--data-dir", str(split)]) == 2
    assert error_line(capsys) == expected


def test_a_missing_checkpoint_reads_the_same_in_find_and_evaluate(split: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert find.main([str(split), "--checkpoint", str(missing), "--no-progress", "--no-cache"]) == 2
    assert error_line(capsys) == f"error: {missing}: checkpoint folder not found"
    assert evaluate.main(["--checkpoint", str(missing), "--data-dir", str(split)]) == 2
    assert error_line(capsys) == f"error: {missing}: checkpoint folder not found"


# --------------------------------------------------------------------------------------------
# The evaluation table and the find summary line
# --------------------------------------------------------------------------------------------


def test_every_row_of_the_evaluation_table_lines_up_with_its_header() -> None:
    point = {"threshold": 0.5, "precision": 0.25, "recall": 0.5, "f1": 0.3333}
    row = {"roc_auc": 0.9, "average_precision": 0.8, "at_default": point, "best_f1": point}
    methods = {m: row for m in ("model", "cosine", "calibrated")}
    report = {"data_dir": "split", "images": 3, "skipped": [],
              "unique": {"pairs": 3, "positive_pairs": 1, "methods": methods}}
    lines = evaluation.table(report).splitlines()
    header = next(k for k, line in enumerate(lines) if line.lstrip().startswith("method"))
    rows = lines[header:]
    assert [line.split()[0] for line in rows] == ["method", "model", "cosine", "calibrated"]
    bars = {tuple(m.start() for m in re.finditer(r"\|", line)) for line in rows}
    ends = {len(line) for line in rows}
    assert len(bars) == 1 and len(ends) == 1, rows
    assert rows[3].startswith("  calibrated  0.9000 0.8000 |")


def test_the_summary_line_counts_one_in_the_singular() -> None:
    summary = {"images": 2, "skipped": 0, "pairs_scored": 1, "candidates": "exhaustive", "duplicate_pairs": 1,
               "copies_below_threshold": 1, "groups": 1, "seconds": 0.5, "method": "phash", "threshold": 0.7344}
    assert result_formats.summary_line(summary) == (
        "2 images, 0 skipped, 1 pair scored (exhaustive), 1 duplicate pair (1 of them a copy under the threshold) in "
        "1 group, 0.5 s [phash, threshold 0.7344]")
    many = {**summary, "images": 1, "pairs_scored": 4560, "duplicate_pairs": 1234, "copies_below_threshold": 2,
            "groups": 12}
    assert result_formats.summary_line(many) == (
        "1 image, 0 skipped, 4,560 pairs scored (exhaustive), 1,234 duplicate pairs (2 of them copies under the "
        "threshold) in 12 groups, 0.5 s [phash, threshold 0.7344]")


# --------------------------------------------------------------------------------------------
# docs/reproduction.md
# --------------------------------------------------------------------------------------------


def test_the_documented_methods_are_those_of_the_command() -> None:
    text = (REPO / "docs" / "reproduction.md").read_text()
    documented = re.search(r"\[--methods ([a-z ]+)\]", text)
    assert documented is not None
    assert tuple(documented.group(1).split()) == scoring_methods.METHOD_CHOICES
    assert tuple(evaluate.__doc__.split("[--methods ")[1].split("]")[0].split()) == scoring_methods.METHOD_CHOICES
