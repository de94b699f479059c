"""Hyperparameters and model_def.py's command line: every bad value, unknown key or
data folder is one line with exit status 2, before any photo is decoded."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import yaml

import model_def
from samespace import decoding, hparams

PUBLISHED = {k: v for k, v in yaml.safe_load((Path(model_def.__file__).parent / "const.yaml").read_text())[
    "hyperparameters"].items()}


def test_the_published_hyperparameters_validate_and_defaults_fill_in() -> None:
    assert hparams.validate(PUBLISHED) == PUBLISHED
    required = {k: PUBLISHED[k] for k in PUBLISHED if hparams.HPARAMS[k].default is hparams.REQUIRED}
    assert hparams.validate(required) == PUBLISHED  # const.yaml states every default explicitly
    assert model_def.OPTIONAL_HPARAMS == hparams.optional_defaults()


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("learning_rat", 0.1, "unknown hyperparameter(s) learning_rat; known: global_batch_size, learning_rate"),
        ("learning_rate", "abc", "learning_rate='abc': expected float in (0, 1]"),
        ("learning_rate", float("nan"), "learning_rate=nan: expected a finite number"),
        ("dropout1", 2, "dropout1=2: expected float in [0, 1)"),
        ("global_batch_size", 0, "global_batch_size=0: expected int in [1, 65536]"),
        ("global_batch_size", 6.5, "global_batch_size=6.5: expected int"),
        ("backbone", "resnet50", "backbone='resnet50': expected mobilenet_v3_large | efficientnet_lite0"),
        ("backbone_weights", "/nowhere/w.pt", "backbone_weights='/nowhere/w.pt': expected imagenet, none or the path"),
        ("tie_twins", "yes", "tie_twins='yes': expected true or false"),
        ("alpha", True, "alpha=True: expected float in [0, 1)"),
    ],
)
def test_each_bad_value_is_named(key: str, value: object, words: str) -> None:
    with pytest.raises(hparams.HparamError) as info:
        hparams.validate({**PUBLISHED, key: value})
    assert words in str(info.value) and "\n" not in str(info.value)


def test_missing_required_and_unchecked_files() -> None:
    with pytest.raises(hparams.HparamError, match="missing hyperparameter"):
        hparams.validate({k: v for k, v in PUBLISHED.items() if k != "learning_rate"})
    # a checkpoint from another machine names a weights file that is not here and not needed
    assert hparams.validate({**PUBLISHED, "backbone_weights": "/nowhere/w.pt"}, check_files=False)


@pytest.fixture()
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("photos were decoded before the inputs were checked")

    monkeypatch.setattr(decoding, "load_images", refuse)
    monkeypatch.setattr(decoding, "load_image", refuse)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--hparam", "learning_rat=0.1"], "unknown hyperparameter(s) learning_rat; known: "),
        (["--hparam", "learning_rate=abc"], "learning_rate='abc'"),
        (["--hparam", "dropout1=2"], "dropout1=2"),
        (["--hparam", "global_batch_size=0"], "global_batch_size=0"),
        (["--hparam", "backbone=resnet50"], "backbone='resnet50'"),
        (["--hparam", "backbone_weights=/nowhere/w.pt"], "backbone_weights='/nowhere/w.pt'"),
        (["--config", "/nowhere/c.yaml"], "--config /nowhere/c.yaml: cannot read"),
    ],
)
def test_model_def_refuses_bad_hyperparameters_before_any_work(
    extra: list[str], words: str, sample_root: Path, tmp_path: Path, capsys, no_decoding
) -> None:
    code = model_def.main(["--data-dir", str(sample_root), "--batches", "1", "--cache-dir", "none",
                           "--checkpoint-dir", str(tmp_path / "ckpt"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and words in err, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_model_def_refuses_a_bad_data_folder_before_any_work(sample_root: Path, tmp_path: Path, capsys,
                                                             no_decoding) -> None:
    only_train = tmp_path / "only-train"
    only_train.mkdir()
    (only_train / "Training Data").symlink_to(sample_root / "Training Data")
    cases = {
        only_train: "missing 'Test Data/'",
        sample_root / "Test Data": "looks like one split folder",
        tmp_path / "missing": "not a directory",
    }
    for folder, words in cases.items():
        assert model_def.main(["--data-dir", str(folder), "--batches", "1", "--cache-dir", "none"]) == 2
        err = capsys.readouterr().err
        assert f"{folder}: {words}" in err and err.count("\n") == 1, err


def test_epochs_zero_is_an_error(sample_root: Path, capsys) -> None:
    for flag in ("--epochs", "--batches"):
        with pytest.raises(SystemExit) as info:
            model_def.main(["--data-dir", str(sample_root), flag, "0"])
        assert info.value.code == 2
        assert capsys.readouterr().err == f"error: {flag} must be at least 1 (see model_def.py --help)\n"


def test_cluster_hyperparameters_are_checked_too(sample_root: Path, capsys, monkeypatch, no_decoding) -> None:
    info = types.SimpleNamespace(task_type="TRIAL", latest_checkpoint=None,
                                 trial=types.SimpleNamespace(hparams={**PUBLISHED, "dropout2": -0.1}))
    monkeypatch.setattr(model_def.det, "get_cluster_info", lambda: info)
    assert model_def.main(["--data-dir", str(sample_root)]) == 2
    assert "the trial's hyperparameters: hyperparameter dropout2=-0.1" in capsys.readouterr().err
