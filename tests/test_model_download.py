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
    assert model_download.main(["--experiment", "7", "--output", str(tmp_path / "out")]) == 2
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


@pytest.fixture()
def html_server():
    """A local web server that is not a Determined master: every request gets an HTML page."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<!DOCTYPE html><html><body><h1>Welcome to nginx!</h1>" + b"<p>x</p>" * 200 + b"</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page  # noqa: N815 - BaseHTTPRequestHandler's names

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_a_master_and_malformed_urls_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path, html_server: str
) -> None:
    cases = {
        html_server: f"error: {html_server} did not answer as a Determined master (",
        "ht!tp://bad url": "error: DET_MASTER 'ht!tp://bad url' is not a URL",
        "http://[::1": "error: DET_MASTER 'http://[::1' is not a URL (Invalid IPv6 URL)",
    }
    for master, words in cases.items():
        monkeypatch.setenv("DET_MASTER", master)
        assert model_download.main(["--experiment", "7", "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(words) and err.count("\n") == 1 and "<h1>" not in err, err
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_a_file_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(model_download, "connect", lambda: pytest.fail("connected"))
    (tmp_path / "f").write_text("x")
    assert model_download.main(["--experiment", "7", "--output", str(tmp_path / "f")]) == 2
    assert "--output" in capsys.readouterr().err
