"""Multi-process training (torchrun, gloo) equals one process, and pause/resume equals an uninterrupted run.

Both train on a tiny generated set (2 training rooms and 1 test room per type, unique pairing) with a random
backbone whose BatchNorm statistics are calibrated (see conftest), so they take seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import model_def
from samespace import checkpoint_loading, siamese, trial_parts
from samespace.devsets import sample_set

pytestmark = pytest.mark.slow  # trains, runs several processes or installs packages

REPO = Path(__file__).resolve().parent.parent

# Run model_def.main with every dropout at 0 (the twin heads' fixed 0.2 too) and record the validation metrics
# the chief reports, so that two processes x 32 pairs can be compared with one process x 64.
DRIVER = """
import json, os, sys
sys.path.insert(0, {repo!r})
from samespace import siamese, trial_parts
siamese.TWIN_DROPOUT = 0.0
import model_def
record = trial_parts.RunLog.on_validation_end
def on_validation_end(self, metrics):
    record(self, metrics)
    if os.environ.get("RANK", "0") == "0":
        with open({metrics_file!r}, "a") as f:
            f.write(json.dumps({{k: float(v) for k, v in metrics.items()}}) + "\\n")
trial_parts.RunLog.on_validation_end = on_validation_end
sys.exit(model_def.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    sample_set.write_sample_dataset(root, seed=0, rooms={"Training Data": 2, "Test Data": 1})
    return root


def _args(root: Path, backbone: Path, checkpoints: Path, cache: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(root), "--checkpoint-dir", str(checkpoints), "--cache-dir", str(cache),
            "--hparam", f"backbone_weights={backbone}", "--hparam", "pairing=unique", *extra]


def _state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / "state_dict.pth", map_location="cpu", weights_only=False)


def test_two_processes_of_32_train_as_one_of_64(tiny_root: Path, calibrated: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A small learning rate keeps the loss near its start (random heads with RMSprop at 2e-3 blow it up to ~400,
    # where float rounding alone exceeds 1e-5).
    learning_rate, alpha, batches = 1e-4, 0.9, 4
    hparams = ["--hparam", "dropout1=0", "--hparam", "dropout2=0", "--hparam", "dropout3=0",
               "--hparam", f"learning_rate={learning_rate}", "--hparam", f"alpha={alpha}", "--batches", str(batches)]
    # Two processes under torchrun; one cache folder per run, so that this run extracts (half per rank).
    folder = tmp_path / "two"
    folder.mkdir()
    driver = folder / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO), metrics_file=str(folder / "metrics.jsonl")))
    args = _args(tiny_root, calibrated, folder / "ckpt", folder / "cache", *hparams)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(driver),
                             *args], capture_output=True, text=True, timeout=900, cwd=folder,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # the chief prints the one checkpoint; the other rank prints nothing
    two_path = Path(lines[0])
    assert [p.name for p in (folder / "ckpt").iterdir()] == [two_path.name]  # one checkpoint
    assert len(list((folder / "cache").iterdir())) == 2  # one feature file per split, written once
    two_metrics = json.loads((folder / "metrics.jsonl").read_text())

    # One process in this one, the same hyperparameters and seed.
    monkeypatch.setattr(siamese, "TWIN_DROPOUT", 0.0)
    one_path, one_metrics = _run(_args(tiny_root, calibrated, tmp_path / "one" / "ckpt", tmp_path / "one" / "cache",
                                       *hparams))
    one, two = _state(one_path), _state(two_path)
    assert [pickle.loads((p / "trial_state.pkl").read_bytes())["batches_trained"] for p in (one_path, two_path)] == [
        4, 4]
    assert 0.01 < one_metrics[-1]["validation_loss"] < 2
    assert two_metrics["validation_loss"] == pytest.approx(one_metrics[-1]["validation_loss"], abs=1e-5)
    assert two_metrics["validation_accuracy"] == pytest.approx(one_metrics[-1]["validation_accuracy"], abs=1e-6)
    torch.manual_seed(0)  # as model_def.main() seeds before building the network
    initial = siamese.SiameseNetwork(backbone_weights=str(calibrated), dropout1=0, dropout2=0, dropout3=0)
    # The two-process checkpoint holds DistributedDataParallel's names ("module."); load_model reads either.
    assert set(two["models_state_dict"][0]) == {f"module.{name}" for name in one["models_state_dict"][0]}
    two_weights = checkpoint_loading.load_model(two_path).state_dict()
    # The gradients agree up to float rounding (a mean over 64 pairs against the mean of two means over 32), but
    # RMSprop divides each element's gradient by its own running RMS, so an element whose gradient is rounding
    # noise takes a step of up to lr / sqrt(1 - alpha) either way, whatever its size. Hence: almost every element
    # agrees to 1e-5, and none differs by more than two such steps a batch. Different data on the two ranks, or
    # gradients left unsynchronised, move most elements apart.
    step = learning_rate / (1 - alpha) ** 0.5
    changed = 0
    for name, value in one["models_state_dict"][0].items():
        if not value.is_floating_point():
            assert torch.equal(two_weights[name], value), name
            continue
        difference = (two_weights[name].double() - value.double()).abs()
        assert (difference > 1e-5).double().mean().item() <= 0.005, name
        assert difference.max().item() <= 2 * batches * step, name
        changed += not torch.equal(value, initial.state_dict()[name])
    assert changed >= 10  # the heads did train


def _run(argv: list[str]) -> tuple[Path, list[dict[str, Any]]]:
    """model_def.main in this process: (the checkpoint it printed, its validation metrics)."""
    validations: list[dict[str, Any]] = []
    record = trial_parts.RunLog.on_validation_end

    def on_validation_end(self: trial_parts.RunLog, metrics: dict[str, Any]) -> None:
        record(self, metrics)
        validations.append(dict(metrics))

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(trial_parts.RunLog, "on_validation_end", on_validation_end)
        assert model_def.main(argv) == 0
    return Path(out.getvalue().splitlines()[-1]), validations


def test_pause_and_resume_equal_an_uninterrupted_run(tiny_root: Path, calibrated: Path, tmp_path: Path) -> None:
    """Published dropouts (so the RNG state matters), 2 epochs vs 1 epoch + resume to 2 from its checkpoint."""
    cache = tmp_path / "cache"
    batch = ["--hparam", "global_batch_size=256"]  # a few steps per epoch: fast, and still several
    straight, straight_metrics = _run(_args(tiny_root, calibrated, tmp_path / "a", cache, "--epochs", "2", *batch))
    paused, paused_metrics = _run(_args(tiny_root, calibrated, tmp_path / "b", cache, "--epochs", "1", *batch))
    resumed, resumed_metrics = _run(_args(tiny_root, calibrated, tmp_path / "b", cache, "--epochs", "2", *batch,
                                          "--resume", str(paused)))
    assert len(straight_metrics) == 2 and len(paused_metrics) == len(resumed_metrics) == 1
    assert straight_metrics[0] != straight_metrics[1]
    assert paused_metrics[0] == straight_metrics[0]
    assert resumed_metrics[0] == straight_metrics[1]  # exactly
    expected, actual = _state(straight), _state(resumed)
    assert expected["models_state_dict"][0].keys() == actual["models_state_dict"][0].keys()
    for name, value in expected["models_state_dict"][0].items():
        assert torch.equal(actual["models_state_dict"][0][name], value), name
    for got, want in zip(actual["optimizers_state_dict"][0]["state"].values(),
                         expected["optimizers_state_dict"][0]["state"].values(), strict=True):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    for key in ("cpu_rng_state",):
        assert torch.equal(actual["rng_state"][key], expected["rng_state"][key])
    trained = [pickle.loads((path / "trial_state.pkl").read_bytes())["batches_trained"]
               for path in (paused, resumed, straight)]
    assert trained[0] >= 3 and trained[1] == trained[2] == 2 * trained[0]
    # The resumed run is a new checkpoint beside the one it resumed; neither holds a feature table.
    assert resumed.parent == paused.parent and resumed != paused
    network_keys = set(siamese.SiameseNetwork(backbone_weights="none").state_dict())
    assert set(actual["models_state_dict"][0]) == network_keys and set(actual) == set(expected)
