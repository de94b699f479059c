"""Checkpoints from others: loading never runs code stored in the file, and a damaged
checkpoint is one line naming the file, exit status 2."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import model_def
from samespace import checkpoint_loading
from samespace.commands import evaluate, find
from samespace.siamese import SiameseNetwork

HPARAMS = {
    **{k: v["val"] if isinstance(v, dict) else v for k, v in yaml.safe_load(
        (Path(model_def.__file__).parent / "const.yaml").read_text())["hyperparameters"].items()},
    "backbone": "efficientnet_lite0",
}


class Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint would do with os.system instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def write_checkpoint(folder: Path, state: dict, hparams: dict | None = None) -> Path:
    """A checkpoint folder as model_def.py writes it: load_data.json naming SiameseTrial and state_dict.pth."""
    folder.mkdir(parents=True)
    load_data = {"trial_type": "PyTorchTrial", "experiment_config": {}, "hparams": hparams or HPARAMS,
                 "trial_cls_spec": "model_def:SiameseTrial", "is_trainer": True}
    (folder / "load_data.json").write_text(json.dumps(load_data))
    torch.save(state, folder / "state_dict.pth")
    return folder


@pytest.fixture(scope="module")
def network_state() -> dict:
    """The state Determined saves for a SiameseTrial, numpy RNG state included (random Lite0 weights)."""
    torch.manual_seed(0)
    network = SiameseNetwork(backbone="efficientnet_lite0", backbone_weights="none")
    return {
        "models_state_dict": [network.state_dict()],
        "optimizers_state_dict": [],
        "lr_schedulers_state_dict": [],
        "callbacks": {"run_log": {}},
        "rng_state": {"cpu_rng_state": torch.random.get_rng_state(), "np_rng_state": np.random.get_state(),
                      "random_rng_state": random.getstate()},
    }


def test_a_checkpoint_with_numpy_rng_state_loads_with_weights_only(network_state: dict, tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ok", network_state)
    network = checkpoint_loading.load_model(folder)
    expected = network_state["models_state_dict"][0]
    for name, value in network.state_dict().items():
        torch.testing.assert_close(value, expected[name])


def test_a_pickle_payload_is_refused_and_never_runs(network_state: dict, tmp_path: Path, test_dir: Path,
                                                     capsys) -> None:
    marker = tmp_path / "payload-ran"
    state = {**network_state, "rng_state": {**network_state["rng_state"], "np_rng_state": Payload(marker)}}
    folder = write_checkpoint(tmp_path / "evil", state)
    with pytest.raises(checkpoint_loading.CheckpointError, match=r"state_dict.pth: refused to load: .*never runs code"):
        checkpoint_loading.load_model(folder)
    assert not marker.exists()

    assert find.main([str(test_dir), "--checkpoint", str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'state_dict.pth'}: refused to load" in err and err.count("\n") == 1
    assert evaluate.main(["--checkpoint", str(folder), "--data-dir", str(test_dir), "--cache-dir", "none"]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()


def test_a_truncated_state_dict_and_a_corrupt_load_data_name_the_file(network_state: dict, tmp_path: Path,
                                                                      test_dir: Path, capsys) -> None:
    folder = write_checkpoint(tmp_path / "truncated", network_state)
    state_file = folder / "state_dict.pth"
    state_file.write_bytes(state_file.read_bytes()[: state_file.stat().st_size // 2])
    with pytest.raises(checkpoint_loading.CheckpointError, match="state_dict.pth: damaged or truncated"):
        checkpoint_loading.load_model(folder)
    assert evaluate.main(["--checkpoint", str(folder), "--data-dir", str(test_dir), "--cache-dir", "none"]) == 2
    err = capsys.readouterr().err
    assert f"{state_file}: damaged or truncated" in err and err.count("\n") == 1

    corrupt = write_checkpoint(tmp_path / "corrupt", network_state)
    (corrupt / "load_data.json").write_text('{"trial_cls_spec": "model_def:SiameseTrial", ')
    assert find.main([str(test_dir), "--checkpoint", str(corrupt), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{corrupt / 'load_data.json'}: cannot read" in err and err.count("\n") == 1
