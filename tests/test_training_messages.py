"""What the training scripts tell a newcomer: one ``error:`` line that names what is wrong where the user gave it
(a missing extra, an --hparam, --batches against a checkpoint, --cache-dir, --sample-data), printed once under
torchrun, no misleading storage notice, no folder left by a refused download, and config comments that point to
documentation sections that exist."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

import model_def
from samespace import decoding, kaggle_data, labelling, local_runs, trial_parts
from samespace.commands import dataset
from samespace.devsets import sample_set

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ("const.yaml", "adaptive.yaml", "distributed.yaml", "improved.yaml", "improved_adaptive.yaml", "embed.yaml")
KNOWN = ("global_batch_size, learning_rate, alpha, dropout1, dropout2, dropout3, backbone, backbone_weights, pairing, "
         "feature_cache, tie_twins, augment_negatives, head, pooling, head_rank, views, n_views, negatives")

# Runs a script as `python SCRIPT ARGS` in an interpreter where importing MODULE fails as if it were not installed.
WITHOUT_MODULE = """
import runpy, sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
sys.argv = {argv!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def run_without(module: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = WITHOUT_MODULE.format(module=module, argv=[script, *args], script=str(REPO / script))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture()
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("photos were decoded before the inputs were checked")

    monkeypatch.setattr(decoding, "load_images", refuse)
    monkeypatch.setattr(decoding, "load_image", refuse)


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """One room per type in each split: enough for the data checks, written in a moment."""
    root = tmp_path / "tiny"
    sample_set.write_sample_dataset(root, seed=0, rooms={"Training Data": 1, "Test Data": 1})
    return root


# --------------------------------------------------------------------------------------------
# A plain `pip install .`: no Determined, no kaggle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("script", "args"), [("model_def.py", ["--help"]),
                                              ("model_def.py", ["--sample-data", "--batches", "1"]),
                                              ("model_download.py", ["--experiment", "1"])])
def test_the_scripts_without_determined_say_to_install_the_train_extra(script: str, args: list[str]) -> None:
    result = run_without("determined", script, *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: {script} needs Determined: pip install '.[train]'\n"


@pytest.fixture()
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Kaggle token in the environment, no other credentials, and a working directory without kaggle.json."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_API_TOKEN", "token")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


def test_download_without_the_kaggle_package_says_to_install_it(tmp_path: Path, credentials: None,
                                                                 monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "kaggle", None)  # `import kaggle` raises ModuleNotFoundError
    target = tmp_path / "data"
    assert dataset.main(["download", "--path", str(target)]) == 2
    assert capsys.readouterr().err == (
        "error: the kaggle package is not installed; install it with pip install '.[train]' in the SameSpace folder "
        f"(or pip install kaggle), or download {kaggle_data.KAGGLE_DATASET} by hand and unzip it so that "
        f"{target / kaggle_data.DATASET_FOLDER}/Training Data exists.\n")
    assert not target.exists()


# --------------------------------------------------------------------------------------------
# A refused or failed download leaves no folder behind
# --------------------------------------------------------------------------------------------


def test_download_without_credentials_creates_no_folder(tmp_path: Path, credentials: None,
                                                        monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    target = tmp_path / "new" / "data"
    assert dataset.main(["download", "--path", str(target)]) == 2
    assert capsys.readouterr().err.startswith("error: Kaggle credentials not found.")
    assert not (tmp_path / "new").exists()


def test_a_failed_download_removes_only_the_folders_it_created(tmp_path: Path, credentials: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def dataset_download_files(dataset: str, path: str, unzip: bool, quiet: bool) -> None:
        (Path(path) / "part.zip").parent.mkdir(parents=True)
        (Path(path) / "part.zip").write_bytes(b"half")
        raise ConnectionError("network is unreachable")

    api = types.SimpleNamespace(dataset_download_files=dataset_download_files)
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=api))
    with pytest.raises(labelling.DataError, match="network is unreachable"):
        kaggle_data.download_data(tmp_path / "new" / "data")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    (kept / "mine.txt").parent.mkdir()
    (kept / "mine.txt").write_text("the user's")
    with pytest.raises(labelling.DataError, match="network is unreachable"):
        kaggle_data.download_data(kept)
    assert (kept / "mine.txt").read_text() == "the user's"


# --------------------------------------------------------------------------------------------
# --hparam, --batches, --cache-dir and --sample-data are named, not the files beside them
# --------------------------------------------------------------------------------------------


BAD_HPARAMS = {
    "learning_rat=1e-3": f"--hparam 'learning_rat=1e-3': unknown hyperparameter(s) learning_rat; known: {KNOWN}",
    "learning_rate=abc": "--hparam 'learning_rate=abc': hyperparameter learning_rate='abc': expected float in (0, 1]",
    "head_rank=0": "--hparam 'head_rank=0': hyperparameter head_rank=0: expected int in [1, 4096]",
}


def test_a_bad_hparam_names_the_option_and_a_bad_config_value_the_config(tmp_path: Path, capsys,
                                                                         no_decoding: None) -> None:
    for item, message in BAD_HPARAMS.items():
        code = model_def.main(["--data-dir", str(tmp_path), "--config", str(REPO / "improved.yaml"), "--batches",
                               "1", "--hparam", item])
        assert (code, capsys.readouterr().err) == (2, f"error: {message}\n")
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "const.yaml").read_text().replace("learning_rate: 0.002061", "learning_rate: 5"))
    code = model_def.main(["--data-dir", str(tmp_path), "--config", str(config), "--batches", "1",
                           "--hparam", "alpha=0.5"])
    assert (code, capsys.readouterr().err) == (
        2, f"error: {config}: hyperparameter learning_rate=5: expected float in (0, 1]\n")


def test_fewer_batches_than_a_checkpoint_trained_names_both(tmp_path: Path, capsys, no_decoding: None) -> None:
    checkpoint = tmp_path / "store" / "uuid"
    checkpoint.mkdir(parents=True)
    (checkpoint / "metadata.json").write_text(json.dumps({"steps_completed": 3}))
    code = model_def.main(["--data-dir", str(tmp_path), "--batches", "2", "--resume", str(checkpoint)])
    assert (code, capsys.readouterr().err) == (
        2, f"error: --resume {checkpoint}: the checkpoint has already trained 3 batches (steps_completed in "
           f"{checkpoint / 'metadata.json'}), and --batches 2 is fewer; give the run's total length: --batches 3 or "
           "more\n")


def test_a_cache_dir_that_cannot_be_a_folder_is_refused_up_front(tiny: Path, tmp_path: Path, capsys,
                                                                 no_decoding: None) -> None:
    a_file = tmp_path / "notes.md"
    a_file.write_text("a file")
    for cache, problem in ((a_file, "is a file, expected a folder"), (a_file / "sub", f"{a_file} is not a folder")):
        code = model_def.main(["--data-dir", str(tiny), "--batches", "1", "--cache-dir", str(cache)])
        assert (code, capsys.readouterr().err) == (2, f"error: --cache-dir {cache}: {problem}\n")
    creatable = tmp_path / "new" / "cache"
    local_runs.check_inputs(model_def.parse_args(["--data-dir", str(tiny), "--cache-dir", str(creatable)]), tiny)
    assert not creatable.parent.exists()  # checked, not created


def test_a_code_folder_over_the_upload_limit_is_refused_before_training(tiny: Path, tmp_path: Path, capsys,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every local checkpoint copies the model folder less .detignore: a virtualenv or dataset left there is refused
    up front, as `det experiment create` refuses it, instead of costing its size per checkpoint."""
    code = tmp_path / "code"
    (code / "samespace").mkdir(parents=True)
    (code / "samespace" / "trial.py").write_text("x = 1\n")
    (code / ".detignore").write_text(".venv*/\ndata/\n")
    for folder in (".venv-py310", "data", "env"):
        (code / folder).mkdir()
        with open(code / folder / "big.bin", "wb") as f:
            f.truncate(200 * 2**20)  # sparse: no disk used
    assert local_runs.copied_code_bytes(code) == {"env": 200 * 2**20, "samespace": 6}
    monkeypatch.setattr(local_runs, "REPO", code)
    assert model_def.main(["--data-dir", str(tiny), "--batches", "1", "--cache-dir", "none"]) == 2
    assert capsys.readouterr().err == (
        f"error: {code} holds over 95 MB that .detignore does not leave out, largest env (200 MB): every local "
        "checkpoint copies it as its code, and `det experiment create` sends at most that much; move those out of the "
        "folder or add them to .detignore\n")
    (code / ".detignore").write_text(".venv*/\ndata/\nenv/\n")
    local_runs.check_code_size(code)  # 6 bytes left
    monkeypatch.undo()
    local_runs.check_code_size()  # this repository


def test_a_sample_data_file_is_named_by_the_option(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "notes.md"
    a_file.write_text("a file")
    assert model_def.main(["--sample-data", str(a_file), "--batches", "1", "--cache-dir", "none"]) == 2
    assert capsys.readouterr().err == f"error: --sample-data {a_file}: is a file, expected a folder\n"
    assert a_file.read_text() == "a file"


# --------------------------------------------------------------------------------------------
# Several processes: the chief reports
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "reports"), [
    ({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"RANK": "1", "LOCAL_RANK": "1"}, False),
    ({"RANK": "2", "LOCAL_RANK": "0"}, False), ({"LOCAL_RANK": "1"}, False), ({"RANK": "x"}, True),
])
def test_only_the_chief_reports_errors(environ: dict[str, str], reports: bool) -> None:
    assert local_runs.reports_errors(environ) is reports


HPARAM_ERROR = "error: --hparam 'alpha=2': hyperparameter alpha=2: expected float in [0, 1)"


def test_other_ranks_exit_2_without_a_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Each rank leaves its error in torchrun's error file, whose failure summary shows the first one; only the
    chief prints it."""
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    for rank, printed in (("1", ""), ("0", HPARAM_ERROR + "\n")):
        monkeypatch.setenv("RANK", rank)
        error_file.unlink(missing_ok=True)
        assert model_def.main(["--data-dir", str(tmp_path), "--batches", "1", "--hparam", "alpha=2"]) == 2
        assert capsys.readouterr().err == printed
        # What torchrun's summary shows, read by torch's own reader
        failure = ProcessFailure(local_rank=int(rank), pid=1, exitcode=2, error_file=str(error_file))
        assert HPARAM_ERROR in ChildFailedError("model_def.py", {int(rank): failure}).format_msg()
        error_file.unlink()
        with pytest.raises(SystemExit) as info:  # argparse's errors too
            model_def.main(["--data-dir", str(tmp_path), "--batches", "0"])
        assert info.value.code == 2
        assert bool(capsys.readouterr().err) is bool(printed)
        assert "model_def.py: error: --batches must be at least 1" in error_file.read_text()


def test_a_rank_without_torchruns_error_file_prints_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys) -> None:
    """Another launcher may leave no error file: the error is then printed, not lost."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    assert model_def.main(["--data-dir", str(tmp_path), "--batches", "1", "--hparam", "alpha=2"]) == 2
    assert capsys.readouterr().err == HPARAM_ERROR + "\n"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "missing-folder" / "error.json"))  # unwritable
    assert model_def.main(["--data-dir", str(tmp_path), "--batches", "1", "--hparam", "alpha=2"]) == 2
    assert capsys.readouterr().err == HPARAM_ERROR + "\n"
    # The variable set by hand to a file that is not an error record: the file is kept, the error printed
    for name, content in (("photo.jpg", b"\xff\xd8 a photo"), ("a.json", b"null"), ("b.json", b"[1, 2]"),
                          ("c.json", b'"message"')):
        target = tmp_path / name
        target.write_bytes(content)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(target))
        before = target.read_bytes()
        assert model_def.main(["--data-dir", str(tmp_path), "--batches", "1", "--hparam", "alpha=2"]) == 2
        assert capsys.readouterr().err == HPARAM_ERROR + "\n"
        assert target.read_bytes() == before


# model_def.main under torchrun, each rank waiting for the other before it exits: torchrun stops the other workers
# once one fails, which could otherwise hide a second line.
DRIVER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import model_def
code = model_def.main(sys.argv[1:])
sys.stderr.flush()
folder = Path({folder!r})
(folder / ("done-" + os.environ["RANK"])).touch()
deadline = time.monotonic() + 120
while len(list(folder.glob("done-*"))) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(code)
"""


@pytest.mark.slow  # two processes under torchrun
def test_torchrun_prints_a_user_error_once(tmp_path: Path) -> None:
    """An error every rank meets is printed once, by the chief, and torchrun's failure summary shows it as the root
    cause: read from the error file torchrun gave the rank (one that only rank 1 meets: the test above)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO), folder=str(tmp_path)))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(driver),
         "--data-dir", str(tmp_path), "--batches", "1", "--hparam", "alpha=2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0 and {p.name for p in tmp_path.glob("done-*")} == {"done-0", "done-1"}
    lines = (result.stdout + result.stderr).splitlines()
    assert [line for line in lines if line.startswith("error: ")] == [HPARAM_ERROR]
    root_cause = result.stderr.split("Root Cause (first observed failure):")[-1]
    assert [line.strip() for line in root_cause.splitlines() if "traceback :" in line] == [
        f"traceback : {HPARAM_ERROR}"], result.stderr[-2000:]


# --------------------------------------------------------------------------------------------
# The checkpoint storage a local run reports
# --------------------------------------------------------------------------------------------


def test_a_run_with_a_checkpoint_dir_does_not_report_determineds_default_storage(
        tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def stop(*args: object, **kwargs: object) -> None:  # right after pytorch.init(): no training needed
        raise trial_parts.DivergedError("stopped here")

    monkeypatch.setattr(model_def, "SiameseTrial", stop)
    checkpoints = tmp_path / "checkpoints"
    with caplog.at_level(logging.INFO):
        assert model_def.main(["--data-dir", str(tiny), "--batches", "1", "--cache-dir", "none",
                               "--checkpoint-dir", str(checkpoints)]) == 2
    messages = [record.getMessage() for record in caplog.records]
    assert f"storing checkpoints in {checkpoints}" in messages
    assert not [m for m in messages if "no storage_manager provided" in m], messages
    assert not logging.getLogger("determined.core").filters  # the filter ends with the run


def test_ctrl_c_on_a_local_run_names_its_last_checkpoint_to_resume_from(
        tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    write_end = trial_parts.RunLog.on_checkpoint_write_end

    def written_then_ctrl_c(self: trial_parts.RunLog, checkpoint_dir: str) -> None:
        write_end(self, checkpoint_dir)
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, right after the checkpoint is written

    monkeypatch.setattr(trial_parts.RunLog, "on_checkpoint_write_end", written_then_ctrl_c)
    options = ["--data-dir", str(tiny), "--batches", "2", "--cache-dir", "none", "--hparam", "backbone_weights=none",
               "--checkpoint-dir", str(tmp_path / "checkpoints")]
    assert model_def.main(options) == 130
    out, err = capsys.readouterr()
    last = err.splitlines()[-1]
    assert last.startswith("interrupted; the last checkpoint is ") and out == ""
    checkpoint = Path(last.removeprefix("interrupted; the last checkpoint is ").partition(":")[0])
    assert last.endswith(f": the same command with --resume {checkpoint} goes on from it")
    assert checkpoint.parent == tmp_path / "checkpoints" and (checkpoint / "state_dict.pth").is_file()


def test_ctrl_c_before_training_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(local_runs, "check_inputs", interrupt)
    assert model_def.main(["--data-dir", str(tmp_path), "--batches", "1"]) == 130
    assert capsys.readouterr() == ("", "interrupted\n")


# --------------------------------------------------------------------------------------------
# Config comments point to documentation that exists
# --------------------------------------------------------------------------------------------


def comment_text(path: Path) -> str:
    """The comments of a YAML file joined into one line (a reference may wrap from one comment line to the next)."""
    parts = [line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line]
    return " ".join(" ".join(parts).split())


def headings(path: Path) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)}


def test_config_comments_point_to_sections_that_exist() -> None:
    for name in CONFIGS:
        text = comment_text(REPO / name)
        for document, section in re.findall(r'(README|docs/[\w.-]+\.md),? "([^"]+)"', text):
            target = REPO / ("README.md" if document == "README" else document)
            assert section in headings(target), f"{name}: {document} has no section {section!r}"
        for document in re.findall(r"docs/[\w.-]+\.md", text):
            assert (REPO / document).is_file(), f"{name}: {document} does not exist"
