"""Download the best checkpoint of a Determined experiment.

    python model_download.py --experiment 42 [--output checkpoints] [--metric validation_loss] [--larger-is-better]

Uses the master in DET_MASTER (default http://127.0.0.1:8080) and the usual `det user login` token cache.
The checkpoint is downloaded into a temporary folder beside the target and renamed into place, so an
interrupted download never leaves a half-written checkpoint. Prints the checkpoint's path. Every error (no master,
not a Determined master, a malformed DET_MASTER, not logged in, unknown experiment, no checkpoint) is one line
on stderr with exit status 2.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from samespace import cli, outputs


class DownloadError(RuntimeError):
    """A download that cannot proceed, with one line saying why and what to do."""


def _require_determined() -> None:
    """A DownloadError unless Determined imports: a plain `pip install .` leaves out the train extra."""
    try:
        import determined  # noqa: F401
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "determined":
            raise
        raise DownloadError("model_download.py needs Determined: pip install '.[train]'") from exc


def _master_url() -> str:
    return os.environ.get("DET_MASTER") or os.environ.get("DET_MASTER_ADDR") or "http://127.0.0.1:8080"


def _check_master_url(master: str) -> None:
    """A DownloadError unless ``master`` looks like ``[http[s]://]host[:port][/path]`` (what Determined accepts)."""
    try:
        parts = urllib.parse.urlsplit(master if "://" in master else f"http://{master}")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise DownloadError(f"DET_MASTER {master!r} is not a URL ({exc}); e.g. https://det.example.com:8080") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in master:
        raise DownloadError(f"DET_MASTER {master!r} is not a URL; e.g. https://det.example.com:8080")


def _api_error(exc: Exception) -> DownloadError:
    """One line for an answer that is not a Determined API's (e.g. an HTML page from another server)."""
    text = " ".join(str(exc).split())
    if text.lstrip().lower().startswith(("<!doctype", "<html")) or len(text) > 200:
        text = f"{type(exc).__name__} with a {len(str(exc)):,}-character body" + (
            " (an HTML page)" if "<html" in text.lower() else "")
    return DownloadError(f"{_master_url()} did not answer as a Determined master ({text}); check DET_MASTER")


def connect() -> Any:
    """A logged-in `determined.experimental.client.Determined`, or a DownloadError saying what is wrong."""
    from determined.common.api import errors
    from determined.experimental import client

    master = _master_url()
    _check_master_url(master)
    try:
        return client.Determined(master=master)
    except errors.MasterNotFoundException as exc:
        raise DownloadError(f"no Determined master reachable at {master} (set DET_MASTER)") from exc
    except errors.UnauthenticatedException as exc:
        raise DownloadError(f"not logged in to {master}: run `det user login` first") from exc
    except (errors.BadRequestException, ValueError) as exc:
        raise _api_error(exc) from exc


def download_best_checkpoint(
    det_client: Any,
    experiment_id: int,
    output: str | Path = "checkpoints",
    metric: str = "validation_loss",
    larger_is_better: bool = False,
) -> Path:
    """Download the experiment's best checkpoint by `metric` to `<output>/<uuid>` and return that path."""
    from determined.common.api import errors
    from determined.experimental import client

    try:
        experiment = det_client.get_experiment(experiment_id)
        order = client.OrderBy.DESC if larger_is_better else client.OrderBy.ASC
        checkpoints = experiment.list_checkpoints(sort_by=metric, order_by=order, max_results=1)
    except errors.NotFoundException as exc:
        raise DownloadError(f"experiment {experiment_id} not found on {_master_url()}") from exc
    except errors.UnauthenticatedException as exc:
        raise DownloadError(f"not logged in to {_master_url()}: run `det user login` first") from exc
    except errors.MasterNotFoundException as exc:
        raise DownloadError(f"no Determined master reachable at {_master_url()} (set DET_MASTER)") from exc
    except (errors.BadRequestException, ValueError) as exc:
        raise _api_error(exc) from exc
    if not checkpoints:
        raise DownloadError(f"experiment {experiment_id} has no completed checkpoint with metric {metric!r} yet")
    best = checkpoints[0]
    output = Path(output)
    target = output / best.uuid
    if (target / "metadata.json").is_file():
        return target  # already downloaded
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{best.uuid}.", dir=output))
    try:
        best.download(str(staging / "checkpoint"))
        if target.exists():
            shutil.rmtree(target)  # an earlier incomplete copy (no metadata.json) of this checkpoint
        (staging / "checkpoint").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", type=int, required=True, help="experiment ID")
    parser.add_argument("--output", default="checkpoints", help="folder to download into (default: checkpoints)")
    parser.add_argument("--metric", default="validation_loss", help="validation metric to rank by")
    parser.add_argument("--larger-is-better", action="store_true", help="rank by the largest metric value")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        _require_determined()
        try:  # before asking the master for anything
            outputs.check_outputs([outputs.Target("--output", Path(args.output), is_dir=True)])
        except outputs.OutputError as exc:
            raise DownloadError(str(exc)) from exc
        path = download_best_checkpoint(
            connect(), args.experiment, args.output, metric=args.metric, larger_is_better=args.larger_is_better
        )
    except DownloadError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return cli.EXIT_ERROR
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_stoppably(main))
