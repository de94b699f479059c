"""Shared fixtures: a small generated dataset (seed 0), a usable random backbone, a trained checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from samespace import decoding, labelling, preprocess
from samespace.devsets import sample_set

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import model_def  # noqa: E402


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample dataset root holding 'Training Data/' and 'Test Data/' (4 and 2 rooms per type)."""
    root = tmp_path_factory.mktemp("sample")
    sample_set.write_sample_dataset(root, seed=0, rooms={"Training Data": 4, "Test Data": 2})
    return root


@pytest.fixture(scope="session")
def train_dir(sample_root: Path) -> Path:
    return sample_root / "Training Data"


@pytest.fixture(scope="session")
def test_dir(sample_root: Path) -> Path:
    return sample_root / "Test Data"


def write_calibrated_backbone(path: Path, image_dir: Path, seed: int = 0) -> Path:
    """A random mobilenet_v3_large state dict whose BatchNorm statistics are estimated on sample photos.

    torchvision's random init with BatchNorm in eval mode shrinks pooled features to ~1e-9, which carry no
    signal; estimating the running statistics first gives unit-scale random features a head can learn from.
    """
    torch.manual_seed(seed)
    net = torchvision.models.mobilenet_v3_large()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
            module.reset_running_stats()
    images = np.stack([decoding.load_image(p) for p in labelling.find_images(image_dir)[:16]])
    with torch.no_grad():
        net.train()(preprocess.normalise(preprocess.to_model_input(images), "mobilenet_v3_large"))
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def calibrated(tmp_path_factory: pytest.TempPathFactory, train_dir: Path) -> Path:
    """A random mobilenet_v3_large state-dict file with calibrated BatchNorm (see write_calibrated_backbone)."""
    return write_calibrated_backbone(tmp_path_factory.mktemp("backbone") / "calibrated.pt", train_dir)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for the session: runs with the same weights extract features once."""
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def trained_run(sample_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """stdout of `model_def.py` training 100 batches on the sample set with the pretrained efficientnet_lite0
    (ImageNet weights that install offline), so the checkpoint has learnt something real."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = model_def.main(["--data-dir", str(sample_root), "--batches", "100",
                               "--hparam", "backbone=efficientnet_lite0",
                               "--checkpoint-dir", str(tmp_path_factory.mktemp("ckpt")), "--cache-dir", str(cache_dir)])
    assert code == 0
    return out.getvalue()


@pytest.fixture(scope="session")
def trained_checkpoint(trained_run: str) -> Path:
    """The checkpoint folder of that run (the last line it printed)."""
    return Path(trained_run.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def _user_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("user-cache")


@pytest.fixture(autouse=True)
def _private_user_cache(_user_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user cache folder (appdirs: $XDG_CACHE_HOME) points into the test session: tests never write the
    real ~/.cache (e.g. find_duplicates.py's default embedding store)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(_user_cache))
