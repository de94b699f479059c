"""The Kaggle "Airbnb Duplicate Image Dataset": where it lives on disk and its download (Kaggle API)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from samespace import labelling

KAGGLE_DATASET = "barelydedicated/airbnb-duplicate-image-detection"
DATASET_FOLDER = "Airbnb Data"
# --------------------------------------------------------------------------------------------
# Download (Kaggle)
# --------------------------------------------------------------------------------------------


def dataset_root(path: str | Path) -> Path:
    """``<path>/Airbnb Data``, the folder holding ``Training Data/`` and ``Test Data/``."""
    return Path(path) / DATASET_FOLDER


def _have_kaggle_credentials(repo_dir: Path) -> bool:
    """Credentials the kaggle package will find; ``repo_dir``: the trial's folder (its working directory)."""
    if (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) or os.environ.get("KAGGLE_API_TOKEN"):
        return True
    # kaggle 2.x: legacy kaggle.json (KAGGLE_CONFIG_DIR, ~/.kaggle or the XDG config dir), API token files
    # and `kaggle auth login` OAuth credentials.
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    config_dirs = [Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle"), Path.home() / ".kaggle", xdg]
    names = ("kaggle.json", "access_token", "access_token.txt", "credentials.json")
    if any((folder / name).is_file() for folder in config_dirs for name in names):
        return True
    seed_file = repo_dir / "kaggle.json"
    if seed_file.is_file():
        # The seed project kept kaggle.json beside the code; the kaggle package reads it from a config dir.
        os.environ["KAGGLE_CONFIG_DIR"] = str(repo_dir)
        return True
    return False


def download_data(path: str | Path = "data") -> Path:
    """Download and unzip the Kaggle dataset to ``<path>/Airbnb Data`` unless it is already there.

    Safe for parallel workers on one node: a file lock lets one download while the others wait.
    Unzips to a temporary folder and renames, so a failure never leaves a half-written dataset.
    """
    from filelock import FileLock

    path = Path(path)
    root = dataset_root(path)
    if all((root / split).is_dir() for split in labelling.SPLITS):
        return root
    path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path / ".download.lock")):
        if all((root / split).is_dir() for split in labelling.SPLITS):
            return root  # another worker finished while we waited
        if not _have_kaggle_credentials(Path.cwd()):
            raise labelling.DataError(
                "Kaggle credentials not found. Put kaggle.json (from kaggle.com -> Settings -> API) in "
                "~/.kaggle/ or this repository's folder, or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN, "
                "or run `kaggle auth login`); or download "
                f"{KAGGLE_DATASET} by hand and unzip it so that {root}/Training Data exists."
            )
        staging = path / ".download.partial"
        if staging.exists():
            shutil.rmtree(staging)
        try:
            import kaggle  # authenticates on import, so only here

            kaggle.api.dataset_download_files(KAGGLE_DATASET, path=str(staging), unzip=True, quiet=False)
        except Exception as exc:  # the kaggle client raises many types for network and auth failures
            raise labelling.DataError(
                f"downloading {KAGGLE_DATASET} failed ({type(exc).__name__}: {exc}). Check the network and "
                f"credentials, or download it by hand and unzip it so that {root}/Training Data exists."
            ) from exc
        unzipped = next((p for p in staging.rglob(DATASET_FOLDER) if p.is_dir()), staging)
        if not all((unzipped / split).is_dir() for split in labelling.SPLITS):
            raise labelling.DataError(f"{staging}: the download does not contain {labelling.SPLITS}")
        unzipped.rename(root)
        if staging.exists():
            shutil.rmtree(staging)  # what the zip held besides the dataset folder
    return root
