"""Reading a checkpoint folder as a stranger's: weights only (no code runs), finite, fitting the network; the
trained network of a checkpoint without Determined.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samespace import hparams as hparams_table
from samespace import run_config, scoring_methods, siamese


class CheckpointError(ValueError):
    """A folder that is not a SameSpace checkpoint, with the path."""


def check_folder(path: str | Path) -> None:
    """Refuse a --checkpoint that is missing or is not a folder, with the same words for every command."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder (give the checkpoint folder that model_def.py printed or "
                              "model_download.py downloaded)")


def read_threshold(checkpoint_dir: str | Path) -> float | None:
    """The best-F1 threshold in ``<checkpoint>/samespace_threshold.json`` (evaluation.write_threshold), or None
    when there is no such file.

    Only a JSON number in [0, 1] is a threshold: ``true`` or ``"0.9"`` would otherwise pass through float() and
    silently change what is grouped. Anything else is a CheckpointError naming the file and the value.
    """
    path = Path(checkpoint_dir) / scoring_methods.THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(run_config.read_small_file(path, run_config.MAX_METADATA_BYTES).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f'{path}: expected {{"threshold": <number>, ...}} ({type(exc).__name__}: '
                              f"{run_config.first_line(exc)})") from exc
    if not isinstance(document, dict) or "threshold" not in document:
        raise CheckpointError(f'{path}: expected {{"threshold": <number>, ...}}')
    value = document["threshold"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:  # also refuses NaN
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise CheckpointError(f"{path}: threshold {shown}: expected a JSON number in [0, 1]")
    return float(value)


def model_threshold(checkpoint_dir: str | Path) -> tuple[float, str]:
    """The checkpoint's threshold (:func:`read_threshold`) and where it came from; without the file,
    ``scoring_methods.MODEL_DEFAULT_THRESHOLD``."""
    value = read_threshold(checkpoint_dir)
    if value is None:
        return scoring_methods.MODEL_DEFAULT_THRESHOLD, "default (no threshold file in the checkpoint)"
    return value, str(Path(checkpoint_dir) / scoring_methods.THRESHOLD_FILE)


def non_finite(tensors: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, or None when all are finite."""
    for name, tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


# --------------------------------------------------------------------------------------------
# Loading a trained model
# --------------------------------------------------------------------------------------------


def checkpoint_safe_globals() -> list[Any]:
    """The only non-tensor types a SameSpace checkpoint may hold, for ``torch.load(weights_only=True)``.

    Determined stores ``np.random.get_state()`` (a uint32 array) with the weights; everything else is tensors,
    numbers, strings and containers, which weights_only allows by itself. numpy 1 pickles the array
    reconstructor as ``numpy.core.multiarray``, numpy 2 as ``numpy._core.multiarray``: both names are allowed.
    """
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    allowed: list[Any] = [reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((reconstruct, f"{module}._reconstruct"))
    return allowed


# Registered once at import: Determined's own resume (torch.load with torch's default weights_only=True) needs
# the numpy RNG state too, and nothing else is ever allowed.
torch.serialization.add_safe_globals(checkpoint_safe_globals())


def read_load_data(path: Path) -> dict[str, Any]:
    """``load_data.json`` of a checkpoint folder, or a CheckpointError naming the file."""
    load_data = path / "load_data.json"
    try:
        document = json.loads(run_config.read_small_file(load_data, run_config.MAX_METADATA_BYTES).decode("utf-8"))
    except FileNotFoundError:
        document = {}
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{load_data}: cannot read ({type(exc).__name__}: {run_config.first_line(exc)})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("hparams", {}), dict):
        raise CheckpointError(f"{load_data}: expected a JSON object with 'hparams' and 'trial_cls_spec'")
    return document


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """``torch.load`` of a checkpoint's state_dict.pth with ``weights_only=True`` (no code in the file runs).

    A file holding other Python objects (e.g. a crafted pickle) or a damaged file: CheckpointError naming it.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than weights ({detail}); "
            "SameSpace never runs code stored in a checkpoint"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not isinstance(state.get("models_state_dict"), list):
        raise CheckpointError(f"{path}: not a Determined PyTorchTrial state (no models_state_dict)")
    return state


def check_finite(state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint state whose weights hold NaN or infinity (a diverged run): it would score nothing."""
    for weights in state["models_state_dict"]:
        bad = non_finite(weights.items()) if isinstance(weights, dict) else None
        if bad is not None:
            raise CheckpointError(f"{path}: weight {bad} is NaN or infinite: the run that wrote this checkpoint "
                                  "diverged; use an earlier checkpoint")


def weight_differences(state: dict[str, Any], network: torch.nn.Module) -> list[str]:
    """How the checkpoint's weights differ from ``network``'s (names and shapes), e.g. ``missing a, b``; empty
    when they fit."""
    weights = state["models_state_dict"][0] if state["models_state_dict"] else {}
    if weights and all(key.startswith("module.") for key in weights):  # a multi-process run's DistributedDataParallel
        weights = {key.removeprefix("module."): value for key, value in weights.items()}
    expected = network.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(weights)
                      if not isinstance(weights[k], torch.Tensor) or weights[k].shape != expected[k].shape)
    differences = [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                   for label, names in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped))
                   if names]
    return differences


def check_weights_fit(state: dict[str, Any], network: torch.nn.Module, path: Path) -> None:
    """Before resuming (model_def.py --resume): refuse a checkpoint whose weights do not fit the ``network`` the
    run's own --config/--hparam build, naming what differs."""
    differences = weight_differences(state, network)
    if differences:
        raise CheckpointError(f"{path}: the checkpoint was trained with other hyperparameters (weights "
                              f"{'; '.join(differences)}); give the --config/--hparam it was trained with")


def load_model(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> siamese.SiameseNetwork:
    """The trained network of a checkpoint directory, in eval mode on ``device``.

    Needs no data and no pretrained weights: the checkpoint holds every weight, frozen ones included.
    Safe on a checkpoint from anyone: state_dict.pth is read with ``weights_only=True`` (only tensors and
    :func:`checkpoint_safe_globals`), and the checkpoint's own code folder is never imported. Needs no Determined:
    the network is built from the checkpoint's hyperparameters as the trial builds it, then its weights loaded.
    """
    path = Path(checkpoint_dir)
    check_folder(path)
    load_data = read_load_data(path)
    spec = str(load_data.get("trial_cls_spec", ""))
    if not spec.endswith(":SiameseTrial") or not (path / "state_dict.pth").is_file():
        raise CheckpointError(
            f"{path}: not a SameSpace checkpoint (expected load_data.json naming SiameseTrial and state_dict.pth; "
            "give the folder model_def.py printed or model_download.py downloaded)"
        )
    try:  # the hparams build the network: check them (weight files named there need not exist here)
        hparams_table.validate(load_data.get("hparams", {}), check_files=False, source=str(path / "load_data.json"))
    except hparams_table.HparamError as exc:
        raise CheckpointError(str(exc)) from exc
    state = read_state_dict(path / "state_dict.pth")  # refuses a crafted or damaged file with one clear line
    check_finite(state, path / "state_dict.pth")
    hparams = {**hparams_table.optional_defaults(), **hparams_table.improved_defaults(), **load_data["hparams"]}
    network = siamese.network_from_hparams(hparams, load_backbone_weights=False)
    # Here the network is built from the checkpoint's own hyperparameters: a misfit means the folder disagrees
    # with itself, which no option of the loading command could mend.
    differences = weight_differences(state, network)
    if differences:
        raise CheckpointError(
            f"{path / 'load_data.json'}: its hyperparameters do not match the model in state_dict.pth (weights "
            f"{'; '.join(differences)}): the checkpoint is inconsistent; give a folder as model_def.py or "
            "model_download.py wrote it")
    try:  # Determined saves the trial's one wrapped model as models_state_dict[0]
        network.load_state_dict(state["models_state_dict"][0])
    except (RuntimeError, KeyError, IndexError) as exc:  # weights that do not fit the network its hparams build
        raise CheckpointError(f"{path}: the weights do not match the network ({type(exc).__name__}: {exc})") from exc
    return network.to(device).eval()
