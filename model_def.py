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
import io
import json
import logging
import math
import os
import pickle
import pickletools
import random
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import appdirs
import determined as det
import numpy as np
import torch
import torch.distributed as dist
import yaml
from determined import core, pytorch
from torch.nn import functional as F

from samespace import cli, kaggle_data, labelling, outputs, pair_dataset, pair_sampling, preprocess, sharding
from samespace import hparams as hparams_table
from samespace.devsets import sample_set
from samespace.model import BackboneWeightsError, SiameseNetwork, extract_features, pair_rows, variant_view

log = logging.getLogger("samespace.trial")

REPO = Path(__file__).resolve().parent
DEFAULT_SAMPLE_DIR = REPO / "data" / "sample"
DEFAULT_CACHE_DIR = Path(appdirs.user_cache_dir("samespace")) / "features"
DOWNLOAD_DIR = Path("data")  # on a cluster, relative to the trial's working directory
TRAIN_SPLIT, VALIDATION_SPLIT = labelling.SPLITS
# Hyperparameters a config may leave out, with the values SiameseNetwork and data.py default to (hparams.py).
OPTIONAL_HPARAMS: dict[str, Any] = hparams_table.optional_defaults()
# The improved recipe's hyperparameters (improved.yaml); their defaults are the published behaviour.
IMPROVED_HPARAMS: dict[str, Any] = hparams_table.improved_defaults()


class CheckpointError(ValueError):
    """A folder that is not a SameSpace checkpoint, with the path."""


class UsageError(ValueError):
    """A command-line error of model_def.py: one line on stderr, exit status 2."""


class DivergedError(RuntimeError):
    """Training whose loss or weights became NaN or infinite: stopped before any checkpoint holds them."""


# Caps on what a run reads from files it is given: real ones are a few KiB; anything far larger is not one.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # values in a config once YAML aliases are expanded (a "billion laughs" stops here)
MAX_METADATA_BYTES = 1 << 20
MAX_TRIAL_STATE_BYTES = 1 << 16
# What Determined 0.38 pickles into trial_state.pkl: vars() of its _TrialState, six ints.
TRIAL_STATE_KEYS = frozenset({"trial_id", "last_ckpt", "step_id", "last_val", "batches_trained", "epochs_trained"})
# Pickle opcodes that build only None, bools, ints, floats, strings, lists, tuples and dicts (and the memo and
# framing that go with them). Every other opcode can name or call a Python object (GLOBAL, REDUCE, BUILD...).
PLAIN_PICKLE_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE",
    "BINUNICODE", "BINUNICODE8",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
})


class PairRows(torch.utils.data.Dataset):
    """A split's pairs as ``(row1, row2, label)``: rows of its feature table (``image * width + variant``)."""

    def __init__(self, pairs: pair_sampling.PairSet, width: int = preprocess.N_VARIANTS) -> None:
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


class PairMeans(pytorch.MetricReducer):
    """Validation loss and accuracy as exact means over pairs, summed across batches and slots.

    Averaging per-batch means would weigh a short last batch like a full one, so the metric would depend on
    how the pairs split into batches and slots; sums and counts do not.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.correct, self.count = 0.0, 0.0, 0

    def update(self, loss_sum: float, correct: float, count: int) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.count += count

    def per_slot_reduce(self) -> tuple[float, float, int]:
        return self.loss_sum, self.correct, self.count

    def cross_slot_reduce(self, per_slot: Sequence[tuple[float, float, int]]) -> dict[str, float]:
        loss_sum, correct, count = (sum(column) for column in zip(*per_slot, strict=True))
        return {"validation_loss": loss_sum / count, "validation_accuracy": correct / count}


class ResumableLoader(pytorch.DataLoader):
    """A Determined DataLoader that can skip the batches a local run already trained.

    On a cluster the Trainer skips them itself (from the trial's ``steps_completed``); locally it always
    starts at batch 0, so a resumed local run sets ``skip_batches`` from the checkpoint it resumes.
    """

    skip_batches = 0

    def get_data_loader(self, repeat: bool = False, skip: int = 0, num_replicas: int = 1,
                        rank: int = 0) -> torch.utils.data.DataLoader:
        return super().get_data_loader(repeat=repeat, skip=skip or self.skip_batches, num_replicas=num_replicas,
                                       rank=rank)


class SiameseTrial(pytorch.PyTorchTrial):
    """Wires the network, RMSprop and the pair loaders into Determined.

    ``data_dir`` holds ``Training Data/`` and ``Test Data/`` (None: download the Kaggle data into
    ``data/``). ``cache_dir`` keeps extracted features across runs (None: no cache file).
    ``load_backbone_weights=False`` skips loading pretrained weights, for when a checkpoint provides them.
    ``skip_batches``: batches a resumed local run already trained (see :class:`ResumableLoader`); ``max_epochs``:
    the run's length when given in epochs, which bounds ``skip_batches`` once the batches per epoch are known.

    Reproducible and resumable: the training order is a seeded shuffle per epoch that depends only on the
    seed and the epoch (so skipping trained batches after a resume restores it), and the loaders draw from
    their own generators, never from the global RNG that dropout uses and checkpoints save. With several
    slots, each extracts its share of the images' features and the tables are gathered.
    """

    def __init__(
        self,
        context: pytorch.PyTorchTrialContext,
        data_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        load_backbone_weights: bool = True,
        skip_batches: int = 0,
        max_epochs: int | None = None,
    ) -> None:
        self.context = context
        self.skip_batches = skip_batches
        self.max_epochs = max_epochs
        self.resume_metadata: Path | None = None  # named when skip_batches proves too many
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
        self.pair_means = context.wrap_reducer(PairMeans(), name=None, for_training=False)
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
        # Stop before a non-finite loss reaches the weights: raising (not Determined's exit) writes no checkpoint.
        if not torch.isfinite(loss):
            raise DivergedError(f"training diverged: the loss is {loss.item()} at batch {batch_idx}; "
                                "lower learning_rate (no checkpoint was written for this state)")
        self.context.backward(loss)
        self.context.step_optimizer(self.optimizer)
        # A finite loss can still step to infinite weights, which the next checkpoint would store.
        bad = non_finite((n, p) for n, p in self.network.named_parameters() if p.requires_grad)
        if bad is not None:
            raise DivergedError(f"training diverged: {bad} became NaN or infinite at batch {batch_idx}; "
                                "lower learning_rate (no checkpoint was written for this state)")
        return {"loss": loss, "accuracy": _accuracy(logits, label)}

    def evaluate_batch(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        logits, label = self._logits(batch, VALIDATION_SPLIT)
        losses = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
        correct = (logits > 0) == (label > 0.5)
        # The reported metrics are PairMeans' exact means (they replace these per-batch means).
        self.pair_means.update(losses.sum().item(), correct.sum().item(), len(label))
        return {"validation_loss": losses.mean(), "validation_accuracy": correct.float().mean()}

    def _logits(self, batch: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        first, second, label = batch
        if self.feature_cache:
            table = self.tables[split]
            first, second = table[first], table[second]
        return self.model(first, second), label

    def _data_root(self) -> Path:
        if self.data_dir is None:
            self.data_dir = kaggle_data.download_data(DOWNLOAD_DIR)  # a file lock makes one worker per node download
        return self.data_dir

    def seed_everything(self) -> int:
        """The trial seed on a cluster, 0 locally (where pytorch.init() sets none)."""
        try:
            return self.context.get_trial_seed()
        except det.errors.InternalException:
            return 0

    def _loader(self, split: str, shuffle: bool) -> pytorch.DataLoader:
        shard = _shard(self.context)
        if self.hparams["views"] == "reshoot":
            dataset: torch.utils.data.Dataset = self._reshoot_pairs(split, shard)
        else:
            dataset = self._published_pairs(split, shard)
        sampler: torch.utils.data.Sampler = torch.utils.data.SequentialSampler(dataset)
        if shuffle:
            sampler = pytorch.samplers.ReproducibleShuffleSampler(sampler, self._seed())
        loader = ResumableLoader(dataset, batch_size=self.context.get_per_slot_batch_size(), sampler=sampler,
                                 generator=torch.Generator().manual_seed(self._seed()))
        loader.skip_batches = self.skip_batches if shuffle else 0
        if shuffle:
            self._check_skip(math.ceil(len(dataset) / self.context.get_per_slot_batch_size()))
        return loader

    def _check_skip(self, batches_per_epoch: int) -> None:
        """Refuse to skip more batches than the whole run trains: skipping walks every batch (a checkpoint
        claiming 10**12 steps would never start)."""
        if self.max_epochs is None or self.skip_batches <= self.max_epochs * batches_per_epoch:
            return
        raise CheckpointError(f"{self.resume_metadata or '--resume'}: steps_completed={self.skip_batches} is more "
                              f"than the {self.max_epochs * batches_per_epoch} batches of {self.max_epochs} "
                              "epoch(s) of this run")

    def _published_pairs(self, split: str, shard: sharding.Shard) -> torch.utils.data.Dataset:
        """The published pairs (8 flip / rotation variants, hash-weighted negatives), as feature-table rows."""
        # Photos are decoded, hashed and dropped: the dataset keeps hashes and pairs, never a split's pixels.
        dataset: torch.utils.data.Dataset = pair_dataset.DuplicateImageDataset(
            self._data_root() / split,
            pairing=self.hparams["pairing"],
            progress=shard.is_chief,
            # Validation keeps the published protocol, so validation_loss stays comparable with 0.3632.
            augment_negatives=bool(self.hparams["augment_negatives"]) and split == TRAIN_SPLIT,
            keep_images=False,
        )
        if self.feature_cache:
            # Each slot runs the backbone over its share of the photos (decoded in batches); all get the table.
            features = extract_features(
                self.network.features, dataset.paths, device=self.context.device, progress=shard.is_chief,
                cache_dir=self.cache_dir, shard=shard,
            )
            self.tables[split] = features.flatten(0, 1).to(self.context.device)
            dataset = PairRows(dataset.pairs)
        return dataset

    def _reshoot_pairs(self, split: str, shard: sharding.Shard) -> PairRows:
        """``views: reshoot``: training pairs over re-shoot views with mined negatives (mining.py); validation on
        every unique pair of the plain images (the honest evaluation, natural class balance)."""
        from samespace import mining, views

        training = split == TRAIN_SPLIT
        n_views = int(self.hparams["n_views"])
        dataset = pair_dataset.DuplicateImageDataset(self._data_root() / split, pairing="unique", balanced=training,
                                             progress=shard.is_chief, keep_images=False)
        features = extract_features(
            self.network.features, dataset.paths, range(n_views) if training else (0,),
            device=self.context.device, progress=shard.is_chief, cache_dir=self.cache_dir, shard=shard,
            view=views.ReshootViews(seed=0, n_views=n_views) if training else variant_view,
        )
        if training:
            unit = torch.nn.functional.normalize(features[:, 0], dim=-1).numpy()
            pairs = mining.reshoot_pairs(dataset.groups, dataset.hashes, unit, negatives=self.hparams["negatives"],
                                         n_views=n_views)
        else:
            pairs = dataset.pairs
        self.tables[split] = features.flatten(0, 1).to(self.context.device)
        return PairRows(pairs, width=features.shape[1])


def _shard(context: pytorch.PyTorchTrialContext) -> sharding.Shard:
    """This process's rank among the trial's slots."""
    return sharding.Shard(context.distributed.rank, context.distributed.size)


def non_finite(tensors: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, or None when all are finite."""
    for name, tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def _accuracy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Share of pairs where sigmoid(logit) > 0.5 agrees with the label."""
    return ((logits > 0) == (label > 0.5)).float().mean()


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
        document = json.loads(read_small_file(load_data, MAX_METADATA_BYTES).decode("utf-8"))
    except FileNotFoundError:
        document = {}
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{load_data}: cannot read ({type(exc).__name__}: {first_line(exc)})") from exc
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


def check_weights_fit(state: dict[str, Any], network: torch.nn.Module, path: Path) -> None:
    """Refuse a checkpoint whose weights do not fit ``network`` (names and shapes), naming what differs."""
    weights = state["models_state_dict"][0] if state["models_state_dict"] else {}
    expected = network.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(weights)
                      if not isinstance(weights[k], torch.Tensor) or weights[k].shape != expected[k].shape)
    differences = [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                   for label, names in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped))
                   if names]
    if differences:
        raise CheckpointError(f"{path}: the checkpoint was trained with other hyperparameters (weights "
                              f"{'; '.join(differences)}); give the --config/--hparam it was trained with")


def load_model(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> SiameseNetwork:
    """The trained network of a checkpoint directory, in eval mode on ``device``.

    Needs no data and no pretrained weights: the checkpoint holds every weight, frozen ones included.
    Safe on a checkpoint from anyone: state_dict.pth is read with ``weights_only=True`` (only tensors and
    :func:`checkpoint_safe_globals`), and the checkpoint's own code folder is never imported.
    """
    path = Path(checkpoint_dir)
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
    try:
        trial = pytorch.load_trial_from_checkpoint_path(
            str(path),
            trial_class=SiameseTrial,
            trial_kwargs={"load_backbone_weights": False},
            torch_load_kwargs={"map_location": "cpu", "weights_only": True, "mmap": True},
        )
    except (RuntimeError, KeyError, IndexError) as exc:  # weights that do not fit the network its hparams build
        raise CheckpointError(f"{path}: the weights do not match the network ({type(exc).__name__}: {exc})") from exc
    return trial.network.to(device).eval()


# --------------------------------------------------------------------------------------------
# The script
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="model_def.py", description=__doc__.split("\n")[0])
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
    parser.add_argument("--resume", type=Path, metavar="CHECKPOINT",
                        help="local: continue the run that wrote this checkpoint folder (what it printed last), "
                             "as a cluster resumes a paused trial; give the same --config/--hparam and the total "
                             "--epochs/--batches")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), metavar="DIR",
                        help=f"folder for extracted-feature files, 'none' for no file (default: {DEFAULT_CACHE_DIR})")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    # Resolve now: local training runs from this folder (see in_folder).
    for name in ("config", "data_dir", "sample_data", "checkpoint_dir", "resume"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    args.cache_dir = None if args.cache_dir.lower() == "none" else Path(args.cache_dir).resolve()
    for flag in ("epochs", "batches"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    return args


def local_hparams(config: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Hyperparameter values of an experiment config (constants), with KEY=VALUE overrides applied.

    A search range (e.g. from adaptive.yaml) has no single value and must be overridden. A config or override
    of the wrong shape is a ValueError of one line.
    """
    values = config_hparams(config)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--hparam {hparams_table.shown(item)}: expected KEY=VALUE")
        values[key.strip()] = yaml_value(value, item)
    ranges = sorted(k for k, v in values.items() if isinstance(v, dict))
    if ranges:
        raise ValueError(f"hyperparameters {ranges} are search ranges in the config; give each a value with --hparam")
    return values


def config_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The config's ``hyperparameters`` mapping with each ``{type: const, val: V}`` replaced by V."""
    table = config.get("hyperparameters") or {}
    if not isinstance(table, dict):
        raise ValueError(f"'hyperparameters' must be a mapping of names to values, not a {type(table).__name__}")
    values: dict[str, Any] = {}
    for key, spec in table.items():
        if not isinstance(key, str):
            raise ValueError(f"hyperparameter name {hparams_table.shown(key)} is not a string")
        if isinstance(spec, dict) and spec.get("type") == "const":
            if "val" not in spec:
                raise ValueError(f"hyperparameter {key}: a const needs 'val'")
            values[key] = spec["val"]
        else:
            values[key] = spec  # a search range (a dict) is resolved by --hparam or rejected
    return values


def first_line(exc: BaseException) -> str:
    """An exception's message as one short line (YAML errors span several, with the text they quote)."""
    lines = str(exc).strip().splitlines()
    return hparams_table.shown(lines[0])[1:-1] if lines else type(exc).__name__


def yaml_value(text: str, item: str = "") -> Any:
    """VALUE typed as YAML (the safe loader: tags never build Python objects), except that 1e-3 is a float
    (YAML 1.1 wants 1.0e-3). Not YAML: a ValueError of one line quoting ``item``."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:  # ValueError: an int of over 4300 digits
        quoted = hparams_table.shown(item or text)
        raise ValueError(f"--hparam {quoted}: not a YAML value ({first_line(exc)})") from None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def training_length(args: argparse.Namespace, searcher: dict[str, Any] | None) -> pytorch.TrainUnit:
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
    raise UsageError("give the training length in the entrypoint: --epochs N or --batches N")


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; OSError or ValueError (one line) otherwise.

    Opened without blocking and checked with fstat before reading: a FIFO or a device never hangs the run, and a
    huge file is never read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{info.st_size} bytes, more than the {limit} a real one needs")
        return f.read(limit + 1)


def count_nodes(document: Any, limit: int) -> bool:
    """Whether ``document`` holds at most ``limit`` values, counting a value again each time an alias repeats it
    (iterative: a self-referencing YAML list ends at the limit too)."""
    stack, seen = [document], 0
    while stack:
        seen += 1
        if seen > limit:
            return False
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)
    return True


def read_config(path: Path) -> dict[str, Any]:
    """The experiment config YAML (safe loader, size-capped), or a UsageError naming the file."""
    try:
        config = yaml.safe_load(read_small_file(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as exc:
        raise UsageError(f"--config {path}: cannot read ({type(exc).__name__}: {first_line(exc)})") from exc
    if not isinstance(config, dict):
        raise UsageError(f"--config {path}: not an experiment config (a YAML mapping)")
    if not count_nodes(config, MAX_CONFIG_NODES):
        raise UsageError(f"--config {path}: more than {MAX_CONFIG_NODES} values once its YAML aliases are expanded")
    try:  # Determined writes the config into each checkpoint as JSON: dates, sets or odd keys would fail there
        json.dumps(config)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"--config {path}: holds values JSON cannot store ({first_line(exc)})") from None
    return config


def checked_hparams(values: dict[str, Any], source: str) -> dict[str, Any]:
    """The hyperparameters checked against hparams.py (type, range, known keys), as given (Determined keeps
    its own copy; the trial fills in the defaults)."""
    try:
        hparams_table.validate(values, source=source)
    except hparams_table.HparamError as exc:
        raise UsageError(str(exc)) from exc
    return values


@dataclass(frozen=True)
class RunPlan:
    """Everything a run takes from the cluster (or, locally, from the command line), decided up front.

    ``latest_checkpoint`` is a checkpoint storage id (a UUID) in ``checkpoint_storage`` (None: the
    default storage: the cluster's, or Determined's local folder); ``skip_batches`` is what a local resume
    must skip (a cluster's Trainer skips on its own); ``print_uuid``: the final line is the checkpoint's UUID
    (cluster) rather than its folder (local).
    """

    on_cluster: bool
    hparams: dict[str, Any]
    exp_conf: dict[str, Any] | None
    max_length: pytorch.TrainUnit
    latest_checkpoint: str | None = None
    checkpoint_storage: Path | None = None
    skip_batches: int = 0
    seed: int | None = 0  # seeds set before building the trial; None: pytorch.init() seeds from the trial seed

    @property
    def print_uuid(self) -> bool:
        return self.on_cluster


def is_trial(info: det.ClusterInfo | None) -> bool:
    """Whether this process runs inside a Determined trial (not locally, not in a notebook or command)."""
    return info is not None and info.task_type == "TRIAL"


def plan_run(args: argparse.Namespace, info: det.ClusterInfo | None) -> RunPlan:
    """The run to do from the parsed arguments and the cluster info (``det.get_cluster_info()``).

    On a cluster: the trial's hyperparameters and config, its length (``--epochs``/``--batches``, else
    ``searcher.max_time`` in ``searcher.time_metric``) and the checkpoint to resume a paused trial from.
    Locally: ``--config``/``--hparam``, 1 epoch by default, and ``--resume``. Raises UsageError (one line,
    exit status 2) for options that do not fit where it runs.
    """
    if is_trial(info):
        assert info is not None
        if args.local or args.hparam or args.checkpoint_dir or args.resume:
            raise UsageError("--local, --hparam, --checkpoint-dir and --resume are for local runs, not inside a trial")
        hparams = checked_hparams(dict(info.trial.hparams), "the trial's hyperparameters")
        config = info.trial._config  # the experiment config as the master expanded it
        return RunPlan(on_cluster=True, hparams=hparams, exp_conf=None,
                       max_length=training_length(args, config.get("searcher")),
                       latest_checkpoint=info.latest_checkpoint, seed=None)
    exp_conf = read_config(args.config)
    try:
        hparams = local_hparams(exp_conf, args.hparam)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    hparams = checked_hparams(hparams, str(args.config))
    max_length = training_length(args, None)
    storage, latest, skip = args.checkpoint_dir, None, 0
    if args.resume is not None:
        if storage is not None and storage != args.resume.parent:
            raise UsageError(f"--resume {args.resume} is not in --checkpoint-dir {storage}")
        max_batches = max_length.value if isinstance(max_length, pytorch.Batch) else None
        latest, skip = resume_point(args.resume, max_batches)
        check_same_hparams(args.resume, hparams)
        storage = args.resume.parent
    return RunPlan(on_cluster=False, hparams=hparams, exp_conf=exp_conf, max_length=max_length,
                   latest_checkpoint=latest, checkpoint_storage=storage, skip_batches=skip)


def resume_point(checkpoint: Path, max_batches: int | None = None) -> tuple[str, int]:
    """(storage id, batches trained) of a local checkpoint folder, from the metadata Determined wrote in it.

    Everything Determined reads back is checked first, as a stranger's file: metadata.json (a JSON object whose
    ``steps_completed`` is an int in [0, max_batches]), trial_state.pkl (a pickle of plain values only, which
    Determined unpickles; its legacy workload_sequencer.pkl is refused) and state_dict.pth (present). Each problem
    is a CheckpointError naming the file.
    """
    if not checkpoint.is_dir():
        raise UsageError(f"--resume {checkpoint}: not a checkpoint folder (no such folder)")
    metadata = checkpoint / "metadata.json"
    try:
        document = json.loads(read_small_file(metadata, MAX_METADATA_BYTES).decode("utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"--resume {checkpoint}: not a checkpoint folder ({metadata}: no such file)") from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{metadata}: cannot read ({type(exc).__name__}: {first_line(exc)})") from exc
    if not isinstance(document, dict) or "steps_completed" not in document:
        raise CheckpointError(f"{metadata}: expected a JSON object with steps_completed")
    steps = document["steps_completed"]
    high = "the run's length" if max_batches is None else max_batches
    if type(steps) is not int or steps < 0 or (max_batches is not None and steps > max_batches):
        raise CheckpointError(f"{metadata}: steps_completed={hparams_table.shown(steps)}: expected a whole number "
                              f"of batches in [0, {high}]")
    if (checkpoint / "trial_state.pkl").exists():  # Determined unpickles it on resume
        check_trial_state(checkpoint / "trial_state.pkl", steps)
    elif (checkpoint / "workload_sequencer.pkl").exists():  # unpickled in its place; only pre-Trainer APIs wrote it
        raise CheckpointError(f"{checkpoint / 'workload_sequencer.pkl'}: refused: a legacy Determined trial state, "
                              "which model_def.py never writes; give the folder model_def.py printed")
    if not (checkpoint / "state_dict.pth").is_file():
        raise CheckpointError(f"{checkpoint}: no state_dict.pth: not a complete checkpoint (give the folder "
                              "model_def.py printed)")
    return checkpoint.name, steps


class NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler that builds plain values only: any class or function the stream names is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def check_trial_state(path: Path, steps: int) -> None:
    """Check a pickle Determined will unpickle on resume, without running it: only plain-value opcodes (no
    GLOBAL, REDUCE, BUILD...), then the six ints Determined's trial state holds, agreeing with metadata.json."""
    try:
        blob = read_small_file(path, MAX_TRIAL_STATE_BYTES)
        for opcode, _, position in pickletools.genops(blob):
            if opcode.name not in PLAIN_PICKLE_OPCODES:
                raise CheckpointError(f"{path}: refused: the pickle names or calls Python objects ({opcode.name} at "
                                      f"byte {position}); SameSpace never runs code stored in a checkpoint")
        state = NoGlobalsUnpickler(io.BytesIO(blob)).load()
    except CheckpointError:
        raise
    except Exception as exc:  # any failure to parse a stranger's pickle means it is not a trial state
        raise CheckpointError(f"{path}: not a Determined trial state ({type(exc).__name__}: "
                              f"{first_line(exc)})") from None
    if (not isinstance(state, dict) or not set(state) <= TRIAL_STATE_KEYS
            or any(type(v) is not int or not 0 <= v < 2**63 for v in state.values())):
        raise CheckpointError(f"{path}: not a Determined trial state (expected a dict of the non-negative ints "
                              f"{', '.join(sorted(TRIAL_STATE_KEYS))})")
    if state.get("trial_id") == 0 and state.get("batches_trained", steps) != steps:  # 0: a local run wrote it
        raise CheckpointError(f"{path}: batches_trained={state.get('batches_trained')} disagrees with "
                              f"steps_completed={steps} in metadata.json")


def check_same_hparams(checkpoint: Path, hparams: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint trained with other hyperparameters, naming those that differ.

    A local checkpoint's load_data.json holds the hyperparameters it was trained with; a folder without them is
    checked later, by its weights' names and shapes (check_weights_fit).
    """
    load_data = read_load_data(checkpoint)
    trained = load_data.get("hparams")
    if not trained:
        return
    try:
        there = {**IMPROVED_HPARAMS, **hparams_table.validate(trained, check_files=False,
                                                              source=str(checkpoint / "load_data.json"))}
    except hparams_table.HparamError as exc:
        raise CheckpointError(str(exc)) from exc
    here = {**IMPROVED_HPARAMS, **hparams_table.validate(hparams, check_files=False)}
    differ = [f"{k}={hparams_table.shown(there.get(k))} there, {hparams_table.shown(here.get(k))} here"
              for k in sorted(set(there) | set(here)) if there.get(k) != here.get(k)]
    if differ:
        raise UsageError(f"--resume {checkpoint}: the checkpoint was trained with other hyperparameters "
                         f"({'; '.join(differ)}); give the --config/--hparam it was trained with")


def final_line(plan: RunPlan, run_log: RunLog, rank: int) -> str | None:
    """What the run prints last: the final checkpoint (UUID on a cluster, folder locally); the chief only."""
    if rank != 0:
        return None
    return run_log.checkpoint_uuid if plan.print_uuid else run_log.checkpoint_dir


def local_distributed() -> core.DistributedContext | None:
    """Under ``torchrun`` (several processes, no cluster): a gloo/NCCL process group and its context.

    On a cluster, pytorch.init() does this itself for determined.launch.torch_distributed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    os.environ["USE_TORCH_DISTRIBUTED"] = "true"  # makes the Trainer wrap the model in DistributedDataParallel
    return core.DistributedContext.from_torch_distributed()


def sample_set_root(folder: Path, shard: sharding.Shard) -> Path:
    """The generated sample set in ``folder``, written first (by the chief) unless both splits are there."""
    if shard.is_chief and not all((folder / split).is_dir() for split in labelling.SPLITS):
        log.info("writing the sample dataset to %s", folder)
        sample_set.write_sample_dataset(folder, seed=0)
    sharding.barrier(shard)  # the other processes read it once it is complete
    return folder


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def in_folder(folder: Path) -> Iterator[None]:
    """Run in ``folder``: local checkpoints copy the working directory (minus .detignore) as their code."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def store_checkpoints_in(context: pytorch.PyTorchTrialContext, folder: Path) -> None:
    """Point local checkpoint storage at ``folder``; pytorch.init() has no parameter for it."""
    from determined.common import storage

    context._core.checkpoint._storage_manager = storage.SharedFSStorageManager(str(folder))


def inside_code(folder: Path) -> bool:
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
    """The command line: bad input (options, hyperparameters, data, weights) is one line, exit status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with cli.clean_warnings():
            return _main(argv)
    except (UsageError, CheckpointError, DivergedError, labelling.DataError, BackboneWeightsError,
            outputs.OutputError) as exc:
        if "--debug" in argv:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def check_inputs(args: argparse.Namespace, data_dir: Path | None) -> None:
    """Before any work: the data folder's layout and the output folder (one line, exit 2, on a problem)."""
    if data_dir is not None and not (args.sample_data and not all((data_dir / s).is_dir() for s in labelling.SPLITS)):
        labelling.check_dataset_root(data_dir)
    if args.checkpoint_dir is not None:
        outputs.check_outputs([outputs.Target("--checkpoint-dir", args.checkpoint_dir, is_dir=True)])


def _main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    plan = plan_run(args, det.get_cluster_info())
    if not plan.on_cluster and args.data_dir is None and args.sample_data is None:
        raise UsageError("local runs need --data-dir DIR or --sample-data")
    check_inputs(args, args.sample_data or args.data_dir)
    if args.checkpoint_dir is not None:
        check_checkpoint_dir(args.checkpoint_dir)
    distributed = None if plan.on_cluster else local_distributed()
    if plan.seed is not None:
        seed_everything(plan.seed)  # on a cluster pytorch.init() seeds from the trial seed
    # Locally, run in this folder: local checkpoints copy the working directory as their code.
    folder = contextlib.nullcontext() if plan.on_cluster else in_folder(REPO)
    try:
        with folder, pytorch.init(hparams=plan.hparams, exp_conf=plan.exp_conf, distributed=distributed,
                                  enable_tensorboard_logging=plan.on_cluster) as context:  # local: no TensorBoard path
            if plan.checkpoint_storage is not None:
                store_checkpoints_in(context, plan.checkpoint_storage)
            data_dir = args.data_dir
            if args.sample_data is not None:
                data_dir = sample_set_root(args.sample_data, _shard(context))
            max_epochs = plan.max_length.value if isinstance(plan.max_length, pytorch.Epoch) else None
            trial = SiameseTrial(context, data_dir=data_dir, cache_dir=args.cache_dir, skip_batches=plan.skip_batches,
                                 max_epochs=max_epochs if plan.skip_batches else None)
            if plan.latest_checkpoint is not None and plan.checkpoint_storage is not None:
                resumed = plan.checkpoint_storage / plan.latest_checkpoint
                check_resume_weights(resumed, trial.network)
                trial.resume_metadata = resumed / "metadata.json"
            trainer = pytorch.Trainer(trial, context)
            # Determined restores a checkpoint with torch.load's default weights_only=True (torch >= 2.6); the numpy
            # RNG state it holds is allowed by checkpoint_safe_globals(), registered at import.
            trainer.fit(
                max_length=plan.max_length,
                validation_period=pytorch.Epoch(1),
                checkpoint_period=pytorch.Epoch(1),
                checkpoint_policy="all",
                latest_checkpoint=plan.latest_checkpoint,
            )
            rank = context.distributed.rank
    finally:
        if distributed is not None and dist.is_initialized():
            dist.destroy_process_group()  # orderly gloo teardown: a rank exiting with it alive can abort (SIGABRT)
    final = final_line(plan, trial.run_log, rank)
    if final is not None:
        print(final, flush=True)
    return 0


def check_resume_weights(checkpoint: Path, network: torch.nn.Module) -> None:
    """Before Determined loads a local checkpoint into ``network``: its weights are readable without running
    code, finite, and fit the network (else one line naming the checkpoint, not a state_dict traceback)."""
    state = read_state_dict(checkpoint / "state_dict.pth")
    check_finite(state, checkpoint / "state_dict.pth")
    check_weights_fit(state, network, checkpoint)


def check_checkpoint_dir(folder: Path) -> None:
    """Create --checkpoint-dir; refuse one inside this package folder (every checkpoint copies it as code)."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)  # .detignore patterns like checkpoints/ need a dir
    if inside_code(folder):
        if created:
            folder.rmdir()
        raise UsageError(f"--checkpoint-dir {folder} is inside {REPO}, which every "
                         "checkpoint copies as its code; use checkpoints/ (in .detignore) or a folder elsewhere")


if __name__ == "__main__":
    # Run through the importable module, so checkpoints name the trial class `model_def:SiameseTrial`,
    # which load_trial_from_checkpoint_path can import (a class defined in __main__ cannot be).
    import model_def

    sys.exit(model_def.main())
