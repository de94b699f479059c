"""The Kaggle "Airbnb Duplicate Image Dataset": where it lives on disk and its download (Kaggle API)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from samespace import labelling

KAGGLE_DATASET = "barelydedicated/airbnb-duplicate-image-detection"
DATASET_FOLDER = "Airbnb Data"
# The kaggle package comes with the train extra (pyproject.toml).
INSTALL_KAGGLE = "pip install '.[train]' in the SameSpace folder (or pip install kaggle)"

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


def _kaggle_api(root: Path) -> Any:
    """The kaggle package's API, or a DataError saying what is missing (it comes with the train extra)."""
    try:
        import kaggle  # authenticates on import, so only once the credentials are known to be there
    except ModuleNotFoundError as exc:
        problem = "is not installed" if (exc.name or "").partition(".")[0] == "kaggle" else f"is incomplete ({exc})"
        raise labelling.DataError(
            f"the kaggle package {problem}; install it with {INSTALL_KAGGLE}, or download {KAGGLE_DATASET} by hand "
            f"and unzip it so that {root}/Training Data exists."
        ) from exc
    except Exception as exc:  # a refused login on import: the same words as a failed download
        raise _failed(exc, root) from exc
    return kaggle.api


def _failed(exc: Exception, root: Path) -> labelling.DataError:
    return labelling.DataError(
        f"downloading {KAGGLE_DATASET} failed ({type(exc).__name__}: {exc}). Check the network and "
        f"credentials, or download it by hand and unzip it so that {root}/Training Data exists."
    )


def download_data(path: str | Path = "data") -> Path:
    """Download and unzip the Kaggle dataset to ``<path>/Airbnb Data`` unless it is already there.

    Safe for parallel workers on one node: a file lock lets one download while the others wait.
    Unzips to a temporary folder and renames, so a failure never leaves a half-written dataset. Credentials and
    the kaggle package are checked before ``path`` is created, and a failed download removes the folders this
    call created, so a refused run leaves nothing behind.
    """
    from filelock import FileLock

    path = Path(path)
    root = dataset_root(path)
    if all((root / split).is_dir() for split in labelling.SPLITS):
        return root
    if not _have_kaggle_credentials(Path.cwd()):
        raise labelling.DataError(
            "Kaggle credentials not found. Put kaggle.json (from kaggle.com -> Settings -> API) in "
            "~/.kaggle/ or this repository's folder, or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN, "
            "or run `kaggle auth login`); or download "
            f"{KAGGLE_DATASET} by hand and unzip it so that {root}/Training Data exists."
        )
    api = _kaggle_api(root)
    created = [p for p in (path, *path.parents) if not p.exists()]  # removed again if the download fails
    path.mkdir(parents=True, exist_ok=True)
    lock = path / ".download.lock"
    try:
        with FileLock(str(lock)):
            if all((root / split).is_dir() for split in labelling.SPLITS):
                return root  # another worker finished while we waited
            _download(api, path, root)
    except BaseException:
        if created:
            _remove_created(path, lock, created)
        raise
    return root


def _download(api: Any, path: Path, root: Path) -> None:
    """Download and unzip into ``path/.download.partial``, then rename the dataset folder to ``root``."""
    staging = path / ".download.partial"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        api.dataset_download_files(KAGGLE_DATASET, path=str(staging), unzip=True, quiet=False)
    except Exception as exc:  # the kaggle client raises many types for network and auth failures
        raise _failed(exc, root) from exc
    unzipped = next((p for p in staging.rglob(DATASET_FOLDER) if p.is_dir()), staging)
    if not all((unzipped / split).is_dir() for split in labelling.SPLITS):
        raise labelling.DataError(f"{staging}: the download does not contain {labelling.SPLITS}")
    unzipped.rename(root)
    if staging.exists():
        shutil.rmtree(staging)  # what the zip held besides the dataset folder


def _remove_created(path: Path, lock: Path, created: list[Path]) -> None:
    """After a failed download: remove the partial download, the lock and the folders this call created."""
    shutil.rmtree(path / ".download.partial", ignore_errors=True)
    lock.unlink(missing_ok=True)
    for folder in created:  # innermost first; a folder something else wrote into stays
        with contextlib.suppress(OSError):
            folder.rmdir()
