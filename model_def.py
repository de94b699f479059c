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
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

try:
    import determined as det
    from determined import pytorch
except ModuleNotFoundError as _missing:
    # A plain `pip install .` leaves out the train extra: as a script, one line instead of an import traceback.
    if __name__ != "__main__" or (_missing.name or "").partition(".")[0] != "determined":
        raise
    print("error: model_def.py needs Determined: pip install '.[train]'", file=sys.stderr)
    sys.exit(2)
import torch
import torch.distributed as dist
from torch.nn import functional as F

from samespace import (
    checkpoint_loading,
    cli,
    feature_cache,
    kaggle_data,
    labelling,
    local_runs,
    outputs,
    pair_dataset,
    resume_checks,
    run_config,
    sharding,
    siamese,
    trial_parts,
)
from samespace import hparams as hparams_table
from samespace.backbones import BackboneWeightsError
from samespace.feature_cache import extract_features, variant_view

log = logging.getLogger("samespace.trial")

REPO = Path(__file__).resolve().parent
DEFAULT_SAMPLE_DIR = REPO / "data" / "sample"
DOWNLOAD_DIR = Path("data")  # on a cluster, relative to the trial's working directory
TRAIN_SPLIT, VALIDATION_SPLIT = labelling.SPLITS
# Hyperparameters a config may leave out, with the values SiameseNetwork and data.py default to (hparams.py).
OPTIONAL_HPARAMS: dict[str, Any] = hparams_table.optional_defaults()
# The improved recipe's hyperparameters (improved.yaml); their defaults are the published behaviour.
IMPROVED_HPARAMS: dict[str, Any] = hparams_table.improved_defaults()




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
        self.network = siamese.network_from_hparams(self.hparams, load_backbone_weights)
        self.model = context.wrap_model(self.network)
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer = context.wrap_optimizer(
            torch.optim.RMSprop(trainable, lr=self.hparams["learning_rate"], alpha=self.hparams["alpha"])
        )
        self.run_log = trial_parts.RunLog()
        self.pair_means = context.wrap_reducer(trial_parts.PairMeans(), name=None, for_training=False)
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
            raise trial_parts.DivergedError(f"training diverged: the loss is {loss.item()} at batch {batch_idx}; "
                                "lower learning_rate (no checkpoint was written for this state)")
        self.context.backward(loss)
        self.context.step_optimizer(self.optimizer)
        # A finite loss can still step to infinite weights, which the next checkpoint would store.
        bad = checkpoint_loading.non_finite((n, p) for n, p in self.network.named_parameters() if p.requires_grad)
        if bad is not None:
            raise trial_parts.DivergedError(f"training diverged: {bad} became NaN or infinite at batch {batch_idx}; "
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

    def _seed(self) -> int:
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
        loader = trial_parts.ResumableLoader(
            dataset,
            batch_size=self.context.get_per_slot_batch_size(),
            sampler=sampler,
            generator=torch.Generator().manual_seed(self._seed()),
        )
        loader.skip_batches = self.skip_batches if shuffle else 0
        if shuffle:
            self._check_skip(math.ceil(len(dataset) / self.context.get_per_slot_batch_size()))
        return loader

    def _check_skip(self, batches_per_epoch: int) -> None:
        """Refuse to skip more batches than the whole run trains: skipping walks every batch (a checkpoint
        claiming 10**12 steps would never start)."""
        if self.max_epochs is None or self.skip_batches <= self.max_epochs * batches_per_epoch:
            return
        raise checkpoint_loading.CheckpointError(
            f"{self.resume_metadata or '--resume'}: steps_completed={self.skip_batches} is more "
            f"than the {self.max_epochs * batches_per_epoch} batches of {self.max_epochs} "
            "epoch(s) of this run"
        )

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
            dataset = trial_parts.PairRows(dataset.pairs)
        return dataset

    def _reshoot_pairs(self, split: str, shard: sharding.Shard) -> trial_parts.PairRows:
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
        return trial_parts.PairRows(pairs, width=features.shape[1])


def _shard(context: pytorch.PyTorchTrialContext) -> sharding.Shard:
    """This process's rank among the trial's slots."""
    return sharding.Shard(context.distributed.rank, context.distributed.size)


def _accuracy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Share of pairs where sigmoid(logit) > 0.5 agrees with the label."""
    return ((logits > 0) == (label > 0.5)).float().mean()


# --------------------------------------------------------------------------------------------
# The script
# --------------------------------------------------------------------------------------------


class _ArgumentParser(cli.ArgumentParser):
    """cli.ArgumentParser whose usage errors, like main's, only the chief of several processes prints (each rank
    leaves its own in torchrun's error file: local_runs.record_error)."""

    def error(self, message: str) -> NoReturn:
        recorded = local_runs.record_error(f"{self.prog}: error: {message}")
        if not local_runs.reports_errors() and recorded:
            raise SystemExit(cli.EXIT_ERROR)
        super().error(message)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _ArgumentParser(prog="model_def.py", description=__doc__.split("\n")[0])
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
    parser.add_argument("--resume", type=Path, metavar="DIR",
                        help="local: continue the run that wrote this checkpoint folder (what it printed last), "
                             "as a cluster resumes a paused trial; give the same --config/--hparam and the total "
                             "--epochs/--batches")
    parser.add_argument(
        "--cache-dir",
        default=str(feature_cache.DEFAULT_CACHE_DIR),
        metavar="DIR",
        help=f"folder for extracted-feature files, 'none' for no file (default: {feature_cache.DEFAULT_CACHE_DIR})",
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: bad input (options, hyperparameters, data, weights) is one line, exit status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with cli.clean_warnings():
            return _main(argv)
    except (
        run_config.UsageError,
        checkpoint_loading.CheckpointError,
        trial_parts.DivergedError,
        labelling.DataError,
        BackboneWeightsError,
        outputs.OutputError,
    ) as exc:
        if "--debug" in argv:
            raise
        # Under torchrun every rank meets the same bad input: the chief says it once, and each rank leaves it in
        # torchrun's error file, so an error only another rank meets is in torchrun's failure summary
        recorded = local_runs.record_error(f"error: {exc}")
        if local_runs.reports_errors() or not recorded:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a local run stopped before training (_main names a checkpoint once it trains)
        if det.get_cluster_info() is not None:
            raise
        if local_runs.reports_errors():
            print("interrupted", file=sys.stderr)
        return cli.EXIT_INTERRUPTED


def _main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    plan = local_runs.plan_run(args, det.get_cluster_info())
    if not plan.on_cluster and args.data_dir is None and args.sample_data is None:
        raise run_config.UsageError("local runs need --data-dir DIR or --sample-data")
    local_runs.check_inputs(args, args.sample_data or args.data_dir)
    if args.checkpoint_dir is not None:
        local_runs.check_checkpoint_dir(args.checkpoint_dir)
    if not plan.on_cluster:
        local_runs.check_code_size()
    distributed = None if plan.on_cluster else local_runs.local_distributed()
    if plan.seed is not None:
        local_runs.seed_everything(plan.seed)  # on a cluster pytorch.init() seeds from the trial seed
    # Locally, run in this folder: local checkpoints copy the working directory as their code.
    folder = contextlib.nullcontext() if plan.on_cluster else local_runs.in_folder(REPO)
    trial = None
    try:
        with folder, local_runs.storage_notice_hidden(plan.checkpoint_storage), pytorch.init(
            hparams=plan.hparams, exp_conf=plan.exp_conf, distributed=distributed,
            enable_tensorboard_logging=plan.on_cluster,  # local: no TensorBoard path
        ) as context:
            if plan.checkpoint_storage is not None:
                local_runs.store_checkpoints_in(context, plan.checkpoint_storage)
            data_dir = args.data_dir
            if args.sample_data is not None:
                data_dir = local_runs.sample_set_root(args.sample_data, _shard(context))
            max_epochs = plan.max_length.value if isinstance(plan.max_length, pytorch.Epoch) else None
            trial = SiameseTrial(context, data_dir=data_dir, cache_dir=args.cache_dir, skip_batches=plan.skip_batches,
                                 max_epochs=max_epochs if plan.skip_batches else None)
            if plan.latest_checkpoint is not None and plan.checkpoint_storage is not None:
                resumed = plan.checkpoint_storage / plan.latest_checkpoint
                resume_checks.check_resume_weights(resumed, trial.network)
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
    except KeyboardInterrupt:  # Ctrl-C on a local run: name the checkpoint to go on from (a cluster has its own)
        if plan.on_cluster:
            raise
        if local_runs.reports_errors():
            print(local_runs.interrupted_line(trial.run_log if trial is not None else None), file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    finally:
        if distributed is not None and dist.is_initialized():
            dist.destroy_process_group()  # orderly gloo teardown: a rank exiting with it alive can abort (SIGABRT)
    final = local_runs.final_line(plan, trial.run_log, rank)
    if final is not None:
        print(final, flush=True)
    return 0


if __name__ == "__main__":
    # Run through the importable module, so checkpoints name the trial class `model_def:SiameseTrial`,
    # which load_trial_from_checkpoint_path can import (a class defined in __main__ cannot be).
    import model_def

    sys.exit(model_def.main())
