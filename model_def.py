"""SameSpace trial: train the Siamese network with Determined's PyTorch Trainer, locally or on a cluster.

    python3 model_def.py --sample-data --batches 20 --hparam backbone_weights=none   # local smoke run
    python3 model_def.py --data-dir "data/Airbnb Data" --epochs 5                    # local, real data
    entrypoint: python3 model_def.py                                                 # on a cluster

On a cluster the hyperparameters, the training length (searcher.max_time) and the checkpoint to resume
from come from the cluster. Locally they come from --config, --hparam and --epochs / --batches.
Validation and a checkpoint happen every epoch and at the end. The last line printed is the final
checkpoint: its directory locally, its UUID on a cluster. Run ``python3 model_def.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import appdirs
import determined as det
import numpy as np
import torch
import yaml
from determined import pytorch
from torch.nn import functional as F

import data
from model import SiameseNetwork, extract_features, pair_rows

log = logging.getLogger("samespace.trial")

REPO = Path(__file__).resolve().parent
DEFAULT_SAMPLE_DIR = REPO / "data" / "sample"
DEFAULT_CACHE_DIR = Path(appdirs.user_cache_dir("samespace")) / "features"
DOWNLOAD_DIR = Path("data")  # on a cluster, relative to the trial's working directory
TRAIN_SPLIT, VALIDATION_SPLIT = data.SPLITS
# Hyperparameters a config may leave out, with the values SiameseNetwork and data.py default to.
OPTIONAL_HPARAMS: dict[str, Any] = {
    "backbone": "mobilenet_v3_large",
    "backbone_weights": "imagenet",
    "pairing": "faithful",
    "feature_cache": True,
    "tie_twins": False,
    "augment_negatives": False,
}
# The improved recipe's hyperparameters (improved.yaml; README "The improved recipe"). Their defaults are the
# published behaviour, so the published configs need not name them.
IMPROVED_HPARAMS: dict[str, Any] = {
    "head": "concat",                 # concat (published MLP) | cosine (model.CosineHead: starts as cosine)
    "pooling": "avg",                 # avg (published) | gem: pooling of the backbone's last feature map
    "head_rank": 64,                  # cosine head: rank of its learned correction to the identity
    "views": "published",             # published (flip / 5-degree variants) | reshoot (views.py, mining.py)
    "n_views": 8,                     # views=reshoot: views per image (the plain one + n_views - 1 re-shoots)
    "negatives": "whash",             # views=reshoot: whash (published sampler) | cosine (half hard look-alikes)
}


class CheckpointError(ValueError):
    """A folder that is not a SameSpace checkpoint, with the path."""


class PairRows(torch.utils.data.Dataset):
    """A split's pairs as ``(row1, row2, label)``: rows of its feature table (``image * width + variant``)."""

    def __init__(self, pairs: data.PairSet, width: int = data.N_VARIANTS) -> None:
        first, second = pair_rows(pairs, width)
        self.first = torch.from_numpy(first)
        self.second = torch.from_numpy(second)
        self.label = torch.from_numpy(pairs.label.astype(np.float32))

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.first[k], self.second[k], self.label[k]


class RunLog(pytorch.PyTorchCallback):
    """What a run produced: per-batch training metrics, validation metrics, the last checkpoint."""

    def __init__(self) -> None:
        self.training: list[dict[str, Any]] = []
        self.validation: list[dict[str, Any]] = []
        self.checkpoint_dir: str | None = None
        self.checkpoint_uuid: str | None = None

    def on_training_workload_end(self, avg_metrics: dict[str, Any], batch_metrics: list[dict[str, Any]]) -> None:
        self.training.extend(batch_metrics)

    def on_validation_end(self, metrics: dict[str, Any]) -> None:
        self.validation.append(metrics)

    def on_checkpoint_write_end(self, checkpoint_dir: str) -> None:
        self.checkpoint_dir = checkpoint_dir

    def on_checkpoint_upload_end(self, uuid: str) -> None:
        self.checkpoint_uuid = uuid


class SiameseTrial(pytorch.PyTorchTrial):
    """Wires the network, RMSprop and the pair loaders into Determined.

    ``data_dir`` holds ``Training Data/`` and ``Test Data/`` (None: download the Kaggle data into
    ``data/``). ``cache_dir`` keeps extracted features across runs (None: no cache file).
    ``load_backbone_weights=False`` skips loading pretrained weights, for when a checkpoint provides them.
    """

    def __init__(
        self,
        context: pytorch.PyTorchTrialContext,
        data_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        load_backbone_weights: bool = True,
    ) -> None:
        self.context = context
        self.hparams = {**OPTIONAL_HPARAMS, **IMPROVED_HPARAMS, **context.get_hparams()}
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.cache_dir = cache_dir
        self.feature_cache = bool(self.hparams["feature_cache"])
        if self.hparams["views"] == "reshoot" and not self.feature_cache:
            raise ValueError("views=reshoot trains on pre-computed views: it needs feature_cache=true")
        self.network = SiameseNetwork(
            backbone=self.hparams["backbone"],
            backbone_weights=self.hparams["backbone_weights"] if load_backbone_weights else "none",
            dropout1=self.hparams["dropout1"],
            dropout2=self.hparams["dropout2"],
            dropout3=self.hparams["dropout3"],
            tie_twins=bool(self.hparams["tie_twins"]),
            head=self.hparams["head"],
            pooling=self.hparams["pooling"],
            head_rank=int(self.hparams["head_rank"]),
        )
        self.model = context.wrap_model(self.network)
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer = context.wrap_optimizer(
            torch.optim.RMSprop(trainable, lr=self.hparams["learning_rate"], alpha=self.hparams["alpha"])
        )
        self.run_log = RunLog()
        # Feature tables (rows image * 8 + variant) per split; held here, not in the model's state_dict.
        self.tables: dict[str, torch.Tensor] = {}

    def build_callbacks(self) -> dict[str, pytorch.PyTorchCallback]:
        return {"run_log": self.run_log}

    def build_training_data_loader(self) -> pytorch.DataLoader:
        return self._loader(TRAIN_SPLIT, shuffle=True)

    def build_validation_data_loader(self) -> pytorch.DataLoader:
        return self._loader(VALIDATION_SPLIT, shuffle=False)

    def train_batch(self, batch: Any, epoch_idx: int, batch_idx: int) -> dict[str, torch.Tensor]:
        logits, label = self._logits(batch, TRAIN_SPLIT)
        loss = F.binary_cross_entropy_with_logits(logits, label)
        self.context.backward(loss)
        self.context.step_optimizer(self.optimizer)
        return {"loss": loss, "accuracy": _accuracy(logits, label)}

    def evaluate_batch(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        logits, label = self._logits(batch, VALIDATION_SPLIT)
        loss = F.binary_cross_entropy_with_logits(logits, label)
        return {"validation_loss": loss, "validation_accuracy": _accuracy(logits, label)}

    def _logits(self, batch: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        first, second, label = batch
        if self.feature_cache:
            table = self.tables[split]
            first, second = table[first], table[second]
        return self.model(first, second), label

    def _data_root(self) -> Path:
        if self.data_dir is None:
            self.data_dir = data.download_data(DOWNLOAD_DIR)  # a file lock makes one worker per node download
        return self.data_dir

    def _loader(self, split: str, shuffle: bool) -> pytorch.DataLoader:
        if self.hparams["views"] == "reshoot":
            return self._reshoot_loader(split, shuffle)
        chief = self.context.distributed.rank == 0
        dataset: torch.utils.data.Dataset = data.DuplicateImageDataset(
            self._data_root() / split,
            pairing=self.hparams["pairing"],
            progress=chief,
            # Validation keeps the published protocol, so validation_loss stays comparable with 0.3632.
            augment_negatives=bool(self.hparams["augment_negatives"]) and split == TRAIN_SPLIT,
        )
        if self.feature_cache:
            features = extract_features(
                self.network.features, dataset.images, device=self.context.device, progress=chief,
                cache_dir=self.cache_dir,
            )
            self.tables[split] = features.flatten(0, 1).to(self.context.device)
            dataset = PairRows(dataset.pairs)
        return pytorch.DataLoader(dataset, batch_size=self.context.get_per_slot_batch_size(), shuffle=shuffle)

    def _reshoot_loader(self, split: str, shuffle: bool) -> pytorch.DataLoader:
        """``views: reshoot``: training pairs over re-shoot views with mined negatives (mining.py); validation on
        every unique pair of the plain images (the honest evaluation, natural class balance)."""
        import mining
        import views

        chief = self.context.distributed.rank == 0
        training = split == TRAIN_SPLIT
        n_views = int(self.hparams["n_views"])
        dataset = data.DuplicateImageDataset(self._data_root() / split, pairing="unique", balanced=training,
                                             progress=chief)
        features = extract_features(
            self.network.features, dataset.images, range(n_views) if training else (0,),
            device=self.context.device, progress=chief, cache_dir=self.cache_dir,
            views=views.ReshootViews(seed=0, n_views=n_views) if training else None,
        )
        if training:
            unit = torch.nn.functional.normalize(features[:, 0], dim=-1).numpy()
            pairs = mining.reshoot_pairs(dataset.groups, dataset.hashes, unit, negatives=self.hparams["negatives"],
                                         n_views=n_views)
        else:
            pairs = dataset.pairs
        self.tables[split] = features.flatten(0, 1).to(self.context.device)
        return pytorch.DataLoader(PairRows(pairs, width=features.shape[1]),
                                  batch_size=self.context.get_per_slot_batch_size(), shuffle=shuffle)


def _accuracy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Share of pairs where sigmoid(logit) > 0.5 agrees with the label."""
    return ((logits > 0) == (label > 0.5)).float().mean()


# --------------------------------------------------------------------------------------------
# Loading a trained model
# --------------------------------------------------------------------------------------------


def load_model(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> SiameseNetwork:
    """The trained network of a checkpoint directory, in eval mode on ``device``.

    Needs no data and no pretrained weights: the checkpoint holds every weight, frozen ones included.
    """
    path = Path(checkpoint_dir)
    load_data = path / "load_data.json"
    spec = json.loads(load_data.read_text()).get("trial_cls_spec", "") if load_data.is_file() else ""
    if not spec.endswith(":SiameseTrial") or not (path / "state_dict.pth").is_file():
        raise CheckpointError(
            f"{path}: not a SameSpace checkpoint (expected load_data.json naming SiameseTrial and state_dict.pth; "
            "give the folder model_def.py printed or model_download.py downloaded)"
        )
    trial = pytorch.load_trial_from_checkpoint_path(
        str(path),
        trial_class=SiameseTrial,
        trial_kwargs={"load_backbone_weights": False},
        # Our own file; it also holds numpy RNG state, which weights_only=True refuses.
        torch_load_kwargs={"map_location": "cpu", "weights_only": False},
    )
    return trial.network.to(device).eval()


# --------------------------------------------------------------------------------------------
# The script
# --------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="model_def.py", description=__doc__.split("\n")[0])
    parser.add_argument("--local", action="store_true",
                        help="train locally (the default when there is no Determined cluster info)")
    parser.add_argument("--config", type=Path, default=REPO / "const.yaml", metavar="YAML",
                        help="local: experiment config whose hyperparameters to use (default: const.yaml)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="folder holding 'Training Data/' and 'Test Data/' (cluster default: download the "
                             "Kaggle data into data/)")
    source.add_argument("--sample-data", type=Path, nargs="?", const=DEFAULT_SAMPLE_DIR, metavar="DIR",
                        help=f"use the generated sample set in DIR, writing it first if absent "
                             f"(default DIR: {DEFAULT_SAMPLE_DIR.relative_to(REPO)})")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, metavar="N",
                        help="train this many epochs (local default: 1; cluster default: searcher.max_time in "
                             "searcher.time_metric)")
    length.add_argument("--batches", type=int, metavar="N", help="train this many batches")
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                        help="local: override a hyperparameter; VALUE is read as YAML (repeatable)")
    parser.add_argument("--checkpoint-dir", type=Path, metavar="DIR",
                        help="local: store checkpoints in DIR/<uuid> (default: Determined's local storage, "
                             "$XDG_DATA_HOME/determined, ~/.local/share/determined on Linux)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), metavar="DIR",
                        help=f"folder for extracted-feature files, 'none' for no file (default: {DEFAULT_CACHE_DIR})")
    args = parser.parse_args(argv)
    # Resolve now: local training runs from this folder (see _in_folder).
    for name in ("config", "data_dir", "sample_data", "checkpoint_dir"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    args.cache_dir = None if args.cache_dir.lower() == "none" else Path(args.cache_dir).resolve()
    for flag in ("epochs", "batches"):
        if (getattr(args, flag) or 1) < 1:
            parser.error(f"--{flag} must be at least 1")
    return args


def local_hparams(config: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Hyperparameter values of an experiment config (constants), with KEY=VALUE overrides applied.

    A search range (e.g. from adaptive.yaml) has no single value and must be overridden.
    """
    values: dict[str, Any] = {}
    for key, spec in (config.get("hyperparameters") or {}).items():
        if not isinstance(spec, dict):
            values[key] = spec
        elif spec.get("type") == "const":
            values[key] = spec["val"]
        else:
            values[key] = spec  # resolved below or rejected
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--hparam {item!r}: expected KEY=VALUE")
        values[key.strip()] = _yaml_value(value)
    ranges = sorted(k for k, v in values.items() if isinstance(v, dict))
    if ranges:
        raise ValueError(f"hyperparameters {ranges} are search ranges in the config; give each a value with --hparam")
    return values


def _yaml_value(text: str) -> Any:
    """VALUE typed as YAML, except that 1e-3 is a float (YAML 1.1 wants 1.0e-3)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def _max_length(args: argparse.Namespace, searcher: dict[str, Any] | None) -> pytorch.TrainUnit:
    """--epochs / --batches; else on a cluster the searcher's max_time in its time_metric; else 1 epoch."""
    if args.batches:
        return pytorch.Batch(args.batches)
    if args.epochs:
        return pytorch.Epoch(args.epochs)
    if searcher is None:
        return pytorch.Epoch(1)
    if searcher.get("time_metric") in ("epochs", "batches") and searcher.get("max_time"):
        unit = pytorch.Epoch if searcher["time_metric"] == "epochs" else pytorch.Batch
        return unit(int(searcher["max_time"]))
    raise SystemExit("error: give the training length in the entrypoint: --epochs N or --batches N")


def _sample_root(folder: Path) -> Path:
    """The generated sample set in ``folder``, written first unless both splits are there."""
    if not all((folder / split).is_dir() for split in data.SPLITS):
        log.info("writing the sample dataset to %s", folder)
        data.write_sample_dataset(folder, seed=0)
    return folder


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _in_folder(folder: Path) -> Iterator[None]:
    """Run in ``folder``: local checkpoints copy the working directory (minus .detignore) as their code."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _store_checkpoints_in(context: pytorch.PyTorchTrialContext, folder: Path) -> None:
    """Point local checkpoint storage at ``folder``; pytorch.init() has no parameter for it."""
    from determined.common import storage

    context._core.checkpoint._storage_manager = storage.SharedFSStorageManager(str(folder))


def _inside_code(folder: Path) -> bool:
    """Whether ``folder`` is in this package folder and not excluded by .detignore.

    Such a folder would be copied into each checkpoint stored in it, recursively.
    """
    from determined.common import detignore

    if not folder.is_relative_to(REPO):
        return False
    ignored = detignore.make_shutil_ignore(REPO)
    parent = REPO
    for name in folder.relative_to(REPO).parts:
        if ignored(str(parent), [name]):
            return False
        parent /= name
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    info = det.get_cluster_info()
    on_cluster = info is not None and info.task_type == "TRIAL"
    if on_cluster and (args.local or args.hparam or args.checkpoint_dir):
        raise SystemExit("error: --local, --hparam and --checkpoint-dir are for local runs, not inside a trial")

    if args.checkpoint_dir is not None:
        created = not args.checkpoint_dir.exists()
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)  # .detignore patterns like checkpoints/ need a dir
        if _inside_code(args.checkpoint_dir):
            if created:
                args.checkpoint_dir.rmdir()
            raise SystemExit(f"error: --checkpoint-dir {args.checkpoint_dir} is inside {REPO}, which every "
                             "checkpoint copies as its code; use checkpoints/ (in .detignore) or a folder elsewhere")
    data_dir = _sample_root(args.sample_data) if args.sample_data else args.data_dir
    if on_cluster:
        assert info is not None
        hparams, exp_conf, latest_checkpoint = info.trial.hparams, None, info.latest_checkpoint
        folder = contextlib.nullcontext()  # Determined runs us in a copy of the model definition
    else:
        if data_dir is None:
            raise SystemExit("error: local runs need --data-dir DIR or --sample-data")
        exp_conf = yaml.safe_load(args.config.read_text())
        try:
            hparams = local_hparams(exp_conf, args.hparam)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from exc
        latest_checkpoint = None
        _seed(0)  # on a cluster pytorch.init() seeds from the trial seed
        folder = _in_folder(REPO)

    with folder, pytorch.init(hparams=hparams, exp_conf=exp_conf,
                              enable_tensorboard_logging=on_cluster) as context:  # local: no TensorBoard path
        if args.checkpoint_dir is not None:
            _store_checkpoints_in(context, args.checkpoint_dir)
        trial = SiameseTrial(context, data_dir=data_dir, cache_dir=args.cache_dir)
        trainer = pytorch.Trainer(trial, context)
        trainer.fit(
            max_length=_max_length(args, context.get_experiment_config()["searcher"] if on_cluster else None),
            validation_period=pytorch.Epoch(1),
            checkpoint_period=pytorch.Epoch(1),
            checkpoint_policy="all",
            latest_checkpoint=latest_checkpoint,
        )
    final = trial.run_log.checkpoint_uuid if on_cluster else trial.run_log.checkpoint_dir
    if final is not None:  # only the chief writes checkpoints
        print(final, flush=True)
    return 0


if __name__ == "__main__":
    # Run through the importable module, so checkpoints name the trial class `model_def:SiameseTrial`,
    # which load_trial_from_checkpoint_path can import (a class defined in __main__ cannot be).
    import model_def

    sys.exit(model_def.main())
