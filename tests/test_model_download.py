"""model_download.py: error lines without a master, and the atomic download with a stand-in client."""

from __future__ import annotations

from pathlib import Path

import pytest
from determined.common.api import errors

import model_download


class FakeCheckpoint:
    def __init__(self, uuid: str, fail: bool = False) -> None:
        self.uuid = uuid
        self.fail = fail

    def download(self, path: str) -> str:
        target = Path(path)
        target.mkdir(parents=True)
        (target / "state_dict.pth").write_bytes(b"weights")
        if self.fail:
            raise ConnectionError("connection dropped mid-download")
        (target / "metadata.json").write_text("{}")
        return path


class FakeExperiment:
    def __init__(self, checkpoints: list[FakeCheckpoint]) -> None:
        self.checkpoints = checkpoints
        self.calls: list[dict] = []

    def list_checkpoints(self, **kwargs):
        self.calls.append(kwargs)
        return self.checkpoints[: kwargs.get("max_results")]


class FakeClient:
    def __init__(self, experiments: dict[int, FakeExperiment]) -> None:
        self.experiments = experiments

    def get_experiment(self, experiment_id: int) -> FakeExperiment:
        if experiment_id not in self.experiments:
            raise errors.NotFoundException("experiment not found")
        return self.experiments[experiment_id]


def test_no_master_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("DET_MASTER", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert model_download.main(["--experiment", "7", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: no Determined master reachable at http://127.0.0.1:9 (set DET_MASTER)"
    assert not (tmp_path / "out").exists()


def test_not_logged_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from determined.experimental import client

    def refuse(*args, **kwargs):
        raise errors.UnauthenticatedException()

    monkeypatch.setattr(client, "Determined", refuse)
    with pytest.raises(model_download.DownloadError, match="det user login"):
        model_download.connect()


def test_unknown_experiment_and_no_checkpoint(tmp_path: Path) -> None:
    fake = FakeClient({1: FakeExperiment([])})
    with pytest.raises(model_download.DownloadError, match="experiment 5 not found"):
        model_download.download_best_checkpoint(fake, 5, tmp_path)
    with pytest.raises(model_download.DownloadError, match="no completed checkpoint"):
        model_download.download_best_checkpoint(fake, 1, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_downloads_best_checkpoint_atomically(tmp_path: Path) -> None:
    experiment = FakeExperiment([FakeCheckpoint("best-uuid"), FakeCheckpoint("worse-uuid")])
    fake = FakeClient({3: experiment})
    path = model_download.download_best_checkpoint(fake, 3, tmp_path / "out", larger_is_better=True)
    assert path == tmp_path / "out" / "best-uuid"
    assert (path / "metadata.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best-uuid"]  # no staging left
    call = experiment.calls[0]
    assert call["sort_by"] == "validation_loss" and call["max_results"] == 1
    assert call["order_by"].name == "DESCENDING"


def test_failed_download_leaves_nothing(tmp_path: Path) -> None:
    fake = FakeClient({3: FakeExperiment([FakeCheckpoint("abc", fail=True)])})
    with pytest.raises(ConnectionError):
        model_download.download_best_checkpoint(fake, 3, tmp_path)
    assert list(tmp_path.iterdir()) == []
