"""Shared fixtures: a small generated dataset in the Airbnb layout (deterministic, seed 0)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import data  # noqa: E402


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample dataset root holding 'Training Data/' and 'Test Data/' (4 and 2 rooms per type)."""
    root = tmp_path_factory.mktemp("sample")
    data.write_sample_dataset(root, seed=0, rooms={"Training Data": 4, "Test Data": 2})
    return root


@pytest.fixture(scope="session")
def train_dir(sample_root: Path) -> Path:
    return sample_root / "Training Data"


@pytest.fixture(scope="session")
def test_dir(sample_root: Path) -> Path:
    return sample_root / "Test Data"
