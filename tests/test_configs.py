"""Experiment configs: valid for Determined 0.38, and saying what the trial needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
VALIDATOR = REPO.parent / "shared" / "tools" / "validate_expconf.py"
CONFIGS = ("const.yaml", "adaptive.yaml", "distributed.yaml", "improved.yaml", "improved_adaptive.yaml")
IMPROVED = ("improved.yaml", "improved_adaptive.yaml")
PUBLISHED = {"learning_rate": 0.002061, "alpha": 0.926, "dropout1": 0.306, "dropout2": 0.491, "dropout3": 0.562,
             "global_batch_size": 64}


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.skipif(not VALIDATOR.is_file(), reason=f"{VALIDATOR} is not present")
@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_the_038_validator(name: str) -> None:
    result = subprocess.run([sys.executable, str(VALIDATOR), str(REPO / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{REPO / name}: valid"


def test_const_has_the_published_hyperparameters() -> None:
    config = _load("const.yaml")
    assert {k: config["hyperparameters"][k] for k in PUBLISHED} == PUBLISHED
    assert config["searcher"] == {"name": "single", "metric": "validation_loss", "smaller_is_better": True}
    assert config["entrypoint"].startswith("python3 model_def.py")


def test_adaptive_searches_the_published_space() -> None:
    config = _load("adaptive.yaml")
    assert config["searcher"] == {"name": "adaptive_asha", "metric": "validation_loss", "smaller_is_better": True,
                                  "max_trials": 16, "time_metric": "epochs", "max_time": 30}
    hparams = config["hyperparameters"]
    assert hparams["learning_rate"] == {"type": "log", "base": 10, "minval": -4, "maxval": -2}
    assert hparams["alpha"] == {"type": "double", "minval": 0.6, "maxval": 0.99}
    for name in ("dropout1", "dropout2", "dropout3"):
        assert hparams[name] == {"type": "double", "minval": 0.2, "maxval": 0.6}
    assert hparams["global_batch_size"] == 64
    assert config["entrypoint"] == "python3 model_def.py"  # the length comes from searcher.max_time


def test_distributed_launches_one_worker_per_slot() -> None:
    config = _load("distributed.yaml")
    assert config["entrypoint"].startswith("python3 -m determined.launch.torch_distributed python3 model_def.py")
    assert config["resources"]["slots_per_trial"] > 1
    assert {k: config["hyperparameters"][k] for k in PUBLISHED} == PUBLISHED


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_names_every_trial_hyperparameter(name: str) -> None:
    import model_def

    named = set(model_def.OPTIONAL_HPARAMS) | set(PUBLISHED)
    if name in IMPROVED:  # the published configs leave the improved recipe's keys at their (published) defaults
        named |= set(model_def.IMPROVED_HPARAMS)
    assert named == set(_load(name)["hyperparameters"])


def _header(name: str) -> str:
    """The comment block a user reads first: every line before the first key."""
    lines = []
    for line in (REPO / name).read_text().splitlines():
        if line and not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(" ".join(lines).split())


def _epochs(config: dict) -> int:
    """The training length in epochs: --epochs in the entrypoint, else searcher.max_time in epochs."""
    words = config["entrypoint"].split()
    if "--epochs" in words:
        return int(words[words.index("--epochs") + 1])
    assert config["searcher"]["time_metric"] == "epochs"
    return int(config["searcher"]["max_time"])


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_states_what_it_costs(name: str) -> None:
    config = _load(name)
    header = _header(name)
    slots = config["resources"]["slots_per_trial"]
    assert f"Cost: {slots} slot" in header
    assert f"{_epochs(config)} epochs" in header
    if name not in IMPROVED:  # the published pairs on the real Kaggle split; the improved recipe mines its own
        assert "199,552 training pairs" in header
    trials = config["searcher"].get("max_trials", 1)
    assert (f"up to {trials} trials" if trials > 1 else "1 trial") in header
    assert config["hyperparameters"]["global_batch_size"] % slots == 0, "the global batch must split over slots"

@pytest.mark.skipif(not VALIDATOR.is_file(), reason=f"{VALIDATOR} is not present")
def test_embed_config_passes_the_038_validator_and_runs_embed_py_per_slot() -> None:
    result = subprocess.run([sys.executable, str(VALIDATOR), str(REPO / "embed.yaml")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"{REPO / 'embed.yaml'}: valid", result.stdout
    config = _load("embed.yaml")
    assert config["entrypoint"].startswith("python3 -m determined.launch.torch_distributed python3 embed.py")
    assert "--store" in config["entrypoint"] and config["resources"]["slots_per_trial"] > 1
    assert config["searcher"]["metric"] == "photos_embedded"  # what embed.py reports at the end


@pytest.mark.parametrize("name", IMPROVED)
def test_improved_configs_select_the_improved_recipe(name: str) -> None:
    hparams = _load(name)["hyperparameters"]
    assert (hparams["head"], hparams["views"], hparams["backbone"]) == ("cosine", "reshoot", "efficientnet_lite0")
    assert hparams["feature_cache"] is True  # views: reshoot trains on pre-computed views
