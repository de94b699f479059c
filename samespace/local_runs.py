"""Planning a run of the trial: on a cluster (Determined gives hyperparameters, length and the checkpoint to
resume) or locally (--config, --hparam, --epochs / --batches, --resume), and the local run's surroundings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import determined as det
import numpy as np
import torch
import torch.distributed as dist
from determined import core, pytorch

from samespace import feature_cache, labelling, outputs, resume_checks, run_config, sharding, trial_parts
from samespace.devsets import sample_set

log = logging.getLogger("samespace.trial")
# The trial's folder: model_def.py beside this package (a checkout, or the model definition on a cluster).
REPO = Path(__file__).resolve().parent.parent


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
    raise run_config.UsageError("give the training length in the entrypoint: --epochs N or --batches N")


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
            raise run_config.UsageError(
                "--local, --hparam, --checkpoint-dir and --resume are for local runs, not inside a trial"
            )
        hparams = run_config.checked_hparams(dict(info.trial.hparams), "the trial's hyperparameters")
        config = info.trial._config  # the experiment config as the master expanded it
        return RunPlan(on_cluster=True, hparams=hparams, exp_conf=None,
                       max_length=training_length(args, config.get("searcher")),
                       latest_checkpoint=info.latest_checkpoint, seed=None)
    exp_conf = run_config.read_config(args.config)
    hparams = run_config.checked_local_hparams(exp_conf, args.config, args.hparam)
    max_length = training_length(args, None)
    storage, latest, skip = args.checkpoint_dir, None, 0
    if args.resume is not None:
        if storage is not None and storage != args.resume.parent:
            raise run_config.UsageError(f"--resume {args.resume} is not in --checkpoint-dir {storage}")
        max_batches = max_length.value if isinstance(max_length, pytorch.Batch) else None
        latest, skip = resume_checks.resume_point(args.resume, max_batches)
        resume_checks.check_same_hparams(args.resume, hparams)
        storage = args.resume.parent
    return RunPlan(on_cluster=False, hparams=hparams, exp_conf=exp_conf, max_length=max_length,
                   latest_checkpoint=latest, checkpoint_storage=storage, skip_batches=skip)


def final_line(plan: RunPlan, run_log: trial_parts.RunLog, rank: int) -> str | None:
    """What the run prints last: the final checkpoint (UUID on a cluster, folder locally); the chief only."""
    if rank != 0:
        return None
    return run_log.checkpoint_uuid if plan.print_uuid else run_log.checkpoint_dir


def interrupted_line(run_log: trial_parts.RunLog | None) -> str:
    """What a local run stopped by Ctrl-C prints: the last checkpoint it wrote, which ``--resume`` goes on from.

    >>> interrupted_line(None)
    'interrupted before the first checkpoint'
    """
    last = run_log.checkpoint_dir if run_log is not None else None
    if last is None:
        return "interrupted before the first checkpoint"
    return f"interrupted; the last checkpoint is {last}: the same command with --resume {last} goes on from it"


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
    if context.distributed.rank == 0:
        log.info("storing checkpoints in %s", folder)  # in place of Determined's line (storage_notice_hidden)


class _DefaultStorageNotice(logging.Filter):
    """Drops Determined's ``no storage_manager provided; storing checkpoints in <its folder>``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("no storage_manager provided")


@contextlib.contextmanager
def storage_notice_hidden(folder: Path | None) -> Iterator[None]:
    """While pytorch.init() runs for a local run that stores its checkpoints in ``folder`` (None: Determined's
    default folder, which its own notice names truly): hide that notice, which would name the default folder.

    Determined 0.38's pytorch.init() takes no checkpoint storage (core.init() does, but pytorch.init() calls it
    without one), so the storage is swapped afterwards (store_checkpoints_in) and only the notice is wrong.
    """
    if folder is None:
        yield
        return
    logger, notice = logging.getLogger("determined.core"), _DefaultStorageNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def reports_errors(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process prints a user error: a lone process, or the chief (rank 0) of several (torchrun, a
    cluster's launcher). Every rank meets the same bad input; the others exit with the same status silently."""
    environ = os.environ if environ is None else environ
    rank = environ.get("RANK", environ.get("LOCAL_RANK", "0"))
    try:
        return int(rank) == 0
    except ValueError:  # not a launcher's rank: rather print twice than not at all
        return True


def record_error(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Leave a user error in the file torchrun names in ``TORCHELASTIC_ERROR_FILE`` (one per rank), whose failure
    summary shows it as the root cause. A rank other than the chief prints nothing (:func:`reports_errors`), so an
    error that only it meets reaches the user there. False when there is no such file or it cannot be written."""
    environ = os.environ if environ is None else environ
    path = environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or (os.path.lexists(path) and not _is_error_record(Path(path))):
        return False  # a file that is not torchrun's error record (a variable set by hand) is never replaced
    # The layout of torch's ErrorHandler.record_exception without a traceback: the summary shows the message itself
    record = {"message": {"message": message, "extraInfo": {"timestamp": str(int(time.time()))}}}
    try:
        outputs.atomic_write(path, json.dumps(record))
    except (OSError, outputs.OutputError):
        return False
    return True


def _is_error_record(path: Path) -> bool:
    """Whether ``path`` is a small JSON file with torch's error-record key (``message``)."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 20:
            return False
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "message" in record


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


def copied_code_bytes(folder: Path, stop_above: int | None = None) -> dict[str, int]:
    """Bytes of each top-level entry of ``folder`` that a local checkpoint copies as its code (what .detignore
    leaves; files through symlinks count), largest first; counting stops once the total passes ``stop_above``."""
    from determined.common import detignore

    ignored = detignore.make_shutil_ignore(folder)
    names = os.listdir(folder)
    sizes: dict[str, int] = {}
    total = 0
    for name in sorted(set(names) - ignored(str(folder), names)):
        size = 0
        walk = os.walk(folder / name) if (folder / name).is_dir() else [(str(folder), [], [name])]
        for parent, dirnames, filenames in walk:
            skip = ignored(parent, dirnames + filenames)
            dirnames[:] = [d for d in dirnames if d not in skip]
            for file in filenames:
                if file not in skip:
                    with contextlib.suppress(OSError):  # a dangling link or a file gone meanwhile copies nothing
                        size += os.stat(os.path.join(parent, file)).st_size
            if stop_above is not None and total + size > stop_above:
                break
        sizes[name], total = size, total + size
        if stop_above is not None and total > stop_above:
            break
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def check_code_size(folder: Path | None = None) -> None:
    """Refuse a local run when ``folder`` (default: this package's folder) holds more outside .detignore than
    Determined uploads (95 MB): every local checkpoint copies it as its code, so a virtualenv or a dataset left there
    costs its size per checkpoint."""
    from determined.common import constants

    folder = REPO if folder is None else folder
    limit = constants.MAX_CONTEXT_SIZE
    sizes = copied_code_bytes(folder, stop_above=limit)
    if sum(sizes.values()) > limit:
        largest = ", ".join(f"{name} ({size / 2**20:,.0f} MB)" for name, size in list(sizes.items())[:3] if size)
        raise run_config.UsageError(
            f"{folder} holds over {limit / 2**20:.0f} MB that .detignore does not leave out, largest {largest}: every "
            "local checkpoint copies it as its code, and `det experiment create` sends at most that much; move those "
            "out of the folder or add them to .detignore")


def check_inputs(args: argparse.Namespace, data_dir: Path | None) -> None:
    """Before any work: the data folder's layout and the output folders (one line, exit 2, on a problem).

    A --sample-data folder still to be written and a --cache-dir given on the command line must be folders or
    creatable; the default cache folder is not checked, as a cache that cannot be written only warns.
    """
    to_write = args.sample_data is not None and not all((args.sample_data / s).is_dir() for s in labelling.SPLITS)
    if data_dir is not None and not to_write:
        labelling.check_dataset_root(data_dir)
    # One check each: these folders may coincide (a cache beside the checkpoints is fine).
    if to_write:
        outputs.check_outputs([outputs.Target("--sample-data", args.sample_data, is_dir=True)])
    if args.checkpoint_dir is not None:
        outputs.check_outputs([outputs.Target("--checkpoint-dir", args.checkpoint_dir, is_dir=True)])
    if args.cache_dir is not None and args.cache_dir != feature_cache.DEFAULT_CACHE_DIR.resolve():
        outputs.check_outputs([outputs.Target("--cache-dir", args.cache_dir, is_dir=True)])


def check_checkpoint_dir(folder: Path) -> None:
    """Create --checkpoint-dir; refuse one inside this package folder (every checkpoint copies it as code)."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)  # .detignore patterns like checkpoints/ need a dir
    if inside_code(folder):
        if created:
            folder.rmdir()
        raise run_config.UsageError(f"--checkpoint-dir {folder} is inside {REPO}, which every "
                         "checkpoint copies as its code; use checkpoints/ (in .detignore) or a folder elsewhere")

