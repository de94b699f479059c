"""The trial and the script: local Trainer runs on the sample set, checkpoints, the uncached path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from determined import pytorch

import model_def
from samespace import checkpoint_loading, feature_cache, local_runs, pair_dataset, run_config
from samespace.devsets import sample_set

pytestmark = pytest.mark.slow  # trains, runs several processes or installs packages

HPARAMS = {"global_batch_size": 64, "learning_rate": 0.002061, "alpha": 0.926,
           "dropout1": 0.306, "dropout2": 0.491, "dropout3": 0.562}


def _trial(context: pytorch.PyTorchTrialContext, sample_root: Path, cache_dir: Path | None) -> model_def.SiameseTrial:
    torch.manual_seed(0)
    return model_def.SiameseTrial(context, data_dir=sample_root, cache_dir=cache_dir)


def test_fit_writes_a_checkpoint_that_loads_back(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two rooms per type to train on, one to validate on: the Trainer's wiring is tested here, not what it learns
    sample_root = sample_set.write_sample_dataset(tmp_path / "sample", seed=0,
                                                  rooms={"Training Data": 2, "Test Data": 1})
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # Determined's local checkpoint storage
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # local checkpoints copy the working directory as their code
    hparams = {**HPARAMS, "backbone_weights": "none"}
    # Without exp_conf, Determined 0.38 saves neither config nor hparams into the checkpoint.
    exp_conf = yaml.safe_load((model_def.REPO / "const.yaml").read_text())
    with pytorch.init(hparams=hparams, exp_conf=exp_conf, enable_tensorboard_logging=False) as context:
        trial = _trial(context, sample_root, cache_dir)
        pytorch.Trainer(trial, context).fit(max_length=pytorch.Epoch(1), validation_period=pytorch.Epoch(1),
                                            checkpoint_period=pytorch.Epoch(1), checkpoint_policy="all")
    batches = len(trial.run_log.training)
    pairs = pair_dataset.DuplicateImageDataset(sample_root / "Training Data", progress=False)
    assert batches == math.ceil(len(pairs) / 64)
    # The Trainer adds `epochs` (adaptive.yaml's time_metric) and `batches` to the validation metrics.
    assert len(trial.run_log.validation) == 1
    assert trial.run_log.validation[0].keys() == {"validation_loss", "validation_accuracy", "epochs", "batches"}
    assert (trial.run_log.validation[0]["epochs"], trial.run_log.validation[0]["batches"]) == (1, batches)
    path = Path(trial.run_log.checkpoint_dir)
    assert path.parent == tmp_path / "xdg" / "determined"

    state = torch.load(path / "state_dict.pth", weights_only=False)["models_state_dict"][0]
    assert set(state) == set(trial.network.state_dict())  # no feature table in the checkpoint
    loaded = pytorch.load_trial_from_checkpoint_path(
        str(path), trial_class=model_def.SiameseTrial, torch_load_kwargs={"weights_only": False}
    )
    network = checkpoint_loading.load_model(path)
    assert not network.training
    trained = trial.network.cpu().eval()
    torch.manual_seed(1)
    images, pooled = torch.randn(4, 3, 64, 64), torch.randn(4, 960)
    with torch.no_grad():
        expected = trained(images, images.flip(0)), trained(pooled, pooled.flip(0))
        for candidate in (loaded.network.eval(), network):
            assert torch.equal(candidate(images, images.flip(0)), expected[0])
            assert torch.equal(candidate(pooled, pooled.flip(0)), expected[1])
    for name, value in trained.state_dict().items():
        assert torch.equal(network.state_dict()[name], value), name


def test_script_trains_and_prints_the_checkpoint_last(
    sample_root: Path, cache_dir: Path, trained_checkpoint: Path
) -> None:
    """A short local run (pretrained efficientnet_lite0, 100 batches): the training loss falls below the
    loss of always predicting the label prior, so the heads learn from the features."""
    path = trained_checkpoint  # the last line trained_run printed
    assert (path / "state_dict.pth").is_file() and path.parent.name.startswith("ckpt")
    load_data = json.loads((path / "load_data.json").read_text())
    assert load_data["trial_cls_spec"] == "model_def:SiameseTrial"
    assert load_data["hparams"]["backbone"] == "efficientnet_lite0"
    assert (path / "code" / "model_def.py").is_file() and not (path / "code" / "data" / "sample").exists()

    network = checkpoint_loading.load_model(path)
    dataset = pair_dataset.DuplicateImageDataset(sample_root / "Training Data", progress=False, keep_images=False)
    labels = torch.from_numpy(dataset.pairs.label.astype(np.float32))
    prior = labels.mean().item()
    prior_loss = -(prior * math.log(prior) + (1 - prior) * math.log(1 - prior))
    # The photo files, as the trial gives them: the table the run cached (the backbone is frozen)
    table = feature_cache.extract_features(network.features, dataset.paths, progress=False, cache_dir=cache_dir)
    rows1, rows2 = (torch.from_numpy(r) for r in feature_cache.pair_rows(dataset.pairs))
    with torch.no_grad():
        logits = network(table.flatten(0, 1)[rows1], table.flatten(0, 1)[rows2])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item()
    assert loss < 0.85 * prior_loss


def test_uncached_trial_matches_cached(sample_root: Path, cache_dir: Path, calibrated: Path) -> None:
    """feature_cache false runs images through the backbone per pair and scores the same as the cache."""
    results = {}
    for cached in (True, False):
        hparams = {**HPARAMS, "backbone_weights": str(calibrated), "feature_cache": cached}
        with pytorch.init(hparams=hparams, enable_tensorboard_logging=False) as context:
            trial = _trial(context, sample_root, cache_dir)
            batch = next(iter(trial.build_validation_data_loader()))
            trial.network.eval()
            with torch.no_grad():
                results[cached] = trial.evaluate_batch(batch, 0)
    assert results[False]["validation_loss"].item() > 0.1
    for name in ("validation_loss", "validation_accuracy"):
        torch.testing.assert_close(results[False][name], results[True][name], atol=1e-4, rtol=0)


def test_local_hparams() -> None:
    config = {"hyperparameters": {"global_batch_size": 64, "alpha": {"type": "const", "val": 0.9},
                                  "learning_rate": {"type": "log", "minval": -4, "maxval": -2, "base": 10}}}
    overrides = ["learning_rate=1e-3", "tie_twins=true", "backbone=efficientnet_lite0", "dropout1=0.25"]
    assert run_config.local_hparams(config, overrides) == {"global_batch_size": 64, "alpha": 0.9, "learning_rate": 1e-3,
                                                          "tie_twins": True, "backbone": "efficientnet_lite0",
                                                          "dropout1": 0.25}
    with pytest.raises(ValueError, match="learning_rate"):
        run_config.local_hparams(config)


def test_load_model_names_a_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(checkpoint_loading.CheckpointError, match=f"{tmp_path}: not a SameSpace checkpoint"):
        checkpoint_loading.load_model(tmp_path)


def test_checkpoint_dir_must_not_be_copied_into_checkpoints(tmp_path: Path) -> None:
    assert local_runs.inside_code(model_def.REPO / "samespace" / "run1")  # copied with the code, recursively
    assert not local_runs.inside_code(model_def.REPO / "tests" / "run1")  # tests/ is in .detignore
    assert not local_runs.inside_code(model_def.REPO / "checkpoints" / "run1")  # in .detignore
    assert not local_runs.inside_code(tmp_path)
