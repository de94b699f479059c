"""The cluster branch of model_def.py, driven by a det.ClusterInfo built here (no master needed).

Everything the script takes from the cluster is decided in plain functions (plan_run, final_line); main() only
hands the plan to pytorch.init() and the Trainer, which are Determined's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import determined as det
import pytest
import yaml
from determined import pytorch

import model_def
from samespace import local_runs, run_config, trial_parts

HPARAMS = {"global_batch_size": 64, "learning_rate": 0.002061, "alpha": 0.926, "dropout1": 0.306,
           "dropout2": 0.491, "dropout3": 0.562, "backbone": "mobilenet_v3_large"}


def cluster_info(searcher: dict[str, Any], latest_checkpoint: str | None = None, task_type: str = "TRIAL",
                 steps_completed: int = 0) -> det.ClusterInfo:
    """What Determined writes into a trial container, as det.ClusterInfo._from_env() would read it."""
    config = {**yaml.safe_load((model_def.REPO / "adaptive.yaml").read_text()), "searcher": searcher}
    trial = det.TrialInfo(trial_id=7, experiment_id=3, trial_seed=1234, hparams=dict(HPARAMS), config=config,
                          steps_completed=steps_completed, trial_run_id=2, debug=False,
                          inter_node_network_interface=None)
    return det.ClusterInfo(master_url="http://master.example:8080", cluster_id="c", agent_id="agent-0",
                           slot_ids=[0], task_id="3.7", allocation_id="3.7.2", session_token="token",
                           task_type=task_type, latest_checkpoint=latest_checkpoint, trial_info=trial)


def _unit(length: pytorch.TrainUnit) -> tuple[str, int]:
    """TrainUnits have no equality: compare kind and value."""
    return type(length).__name__, length.value


ASHA = {"name": "adaptive_asha", "metric": "validation_loss", "smaller_is_better": True, "time_metric": "epochs",
        "max_time": 30, "max_trials": 16}


def test_a_trial_takes_hparams_length_and_checkpoint_from_the_cluster() -> None:
    uuid = "6f1c2d3e-0000-4000-8000-123456789abc"
    plan = local_runs.plan_run(model_def.parse_args([]), cluster_info(ASHA, latest_checkpoint=uuid))
    assert plan.on_cluster and plan.print_uuid
    assert plan.hparams == HPARAMS
    assert _unit(plan.max_length) == ("Epoch", 30)
    assert plan.latest_checkpoint == uuid  # a paused trial resumes from it
    assert plan.skip_batches == 0  # the cluster's Trainer skips trained batches itself (steps_completed)
    assert plan.seed is None and plan.exp_conf is None and plan.checkpoint_storage is None  # all Determined's


@pytest.mark.parametrize(("searcher", "argv", "length"), [
    ({**ASHA, "time_metric": "batches", "max_time": 500}, [], pytorch.Batch(500)),
    (ASHA, ["--epochs", "2"], pytorch.Epoch(2)),  # the entrypoint's length wins
    ({"name": "single", "metric": "validation_loss"}, ["--batches", "9"], pytorch.Batch(9)),
])
def test_the_length_comes_from_the_entrypoint_or_the_searcher(searcher: dict, argv: list[str],
                                                              length: pytorch.TrainUnit) -> None:
    assert _unit(local_runs.plan_run(model_def.parse_args(argv), cluster_info(searcher)).max_length) == _unit(length)


def test_a_trial_without_any_length_is_an_error() -> None:
    with pytest.raises(run_config.UsageError, match="--epochs N or --batches N"):
        local_runs.plan_run(model_def.parse_args([]), cluster_info({"name": "single", "metric": "validation_loss"}))
    with pytest.raises(run_config.UsageError, match="--epochs N or --batches N"):  # a metric ASHA cannot count
        local_runs.plan_run(model_def.parse_args([]), cluster_info({**ASHA, "time_metric": "validation_loss"}))


@pytest.mark.parametrize("argv", [["--local"], ["--hparam", "alpha=0.9"], ["--checkpoint-dir", "/tmp/x"],
                                  ["--resume", "/tmp/x"]])
def test_local_options_are_refused_inside_a_trial(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    info = cluster_info(ASHA)
    with pytest.raises(run_config.UsageError, match="are for local runs"):
        local_runs.plan_run(model_def.parse_args(argv), info)
    # main() decides from the same info before any call to the master: one line, exit status 2.
    monkeypatch.setattr(det, "get_cluster_info", lambda: info)
    assert model_def.main(argv) == 2
    assert capsys.readouterr().err == ("error: --local, --hparam, --checkpoint-dir and --resume are for local runs, "
                                       "not inside a trial\n")


def test_outside_a_trial_the_run_is_local(tmp_path: Path) -> None:
    args = model_def.parse_args(["--hparam", "alpha=0.5", "--batches", "3"])
    for info in (None, cluster_info(ASHA, task_type="COMMAND")):  # e.g. a notebook or command on the cluster
        plan = local_runs.plan_run(args, info)
        assert not plan.on_cluster and not plan.print_uuid
        assert plan.hparams["alpha"] == 0.5 and plan.hparams["learning_rate"] == 0.002061
        assert _unit(plan.max_length) == ("Batch", 3) and plan.seed == 0 and plan.latest_checkpoint is None


def test_a_local_resume_reads_the_checkpoint_folder(tmp_path: Path) -> None:
    checkpoint = tmp_path / "store" / "0b7e3c1a-uuid"
    checkpoint.mkdir(parents=True)
    (checkpoint / "metadata.json").write_text(json.dumps({"steps_completed": 147, "format": "pickle"}))
    (checkpoint / "state_dict.pth").write_bytes(b"")  # present; its weights are checked once the network is built
    plan = local_runs.plan_run(model_def.parse_args(["--resume", str(checkpoint), "--epochs", "2"]), None)
    assert (plan.latest_checkpoint, plan.checkpoint_storage, plan.skip_batches) == (
        "0b7e3c1a-uuid", tmp_path / "store", 147)
    with pytest.raises(run_config.UsageError, match="is not in --checkpoint-dir"):
        local_runs.plan_run(model_def.parse_args(["--resume", str(checkpoint), "--checkpoint-dir",
                                                  str(tmp_path / "other")]), None)
    with pytest.raises(run_config.UsageError, match=f"--resume {tmp_path}: not a checkpoint folder"):
        local_runs.plan_run(model_def.parse_args(["--resume", str(tmp_path)]), None)


def test_the_final_line_is_the_uuid_on_a_cluster_and_the_folder_locally() -> None:
    log = trial_parts.RunLog()
    log.on_checkpoint_write_end("/store/6f1c")  # the chief writes it
    log.on_checkpoint_upload_end("6f1c")  # every rank hears the UUID
    cluster = local_runs.plan_run(model_def.parse_args([]), cluster_info(ASHA))
    local = local_runs.plan_run(model_def.parse_args([]), None)
    assert local_runs.final_line(cluster, log, rank=0) == "6f1c"
    assert local_runs.final_line(local, log, rank=0) == "/store/6f1c"
    assert local_runs.final_line(cluster, log, rank=1) is None and local_runs.final_line(local, log, rank=1) is None
