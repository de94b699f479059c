"""Hostile input on the training side: a resumed checkpoint, its metadata and trial state, configs, --hparam
values, diverging training, non-finite weights and real-photo manifests. Each is refused with one line naming
the file or the value, exit status 2; no stored code runs and no input file changes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch

import model_def
from samespace import checkpoint_loading, resume_checks, run_config
from samespace.commands import evaluate, find
from samespace.devsets import manifests, real_photos, sample_set

pytestmark = pytest.mark.slow  # trains, runs several processes or installs packages

TINY = ["--hparam", "backbone_weights=none", "--hparam", "pairing=unique", "--hparam", "global_batch_size=256"]


class SystemCall:
    """Unpickling this runs ``touch marker`` through os.system: what a crafted trial_state.pkl would do."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path: the inputs a refused run must leave as they were."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(capsys: pytest.CaptureFixture[str], after_progress: bool = False) -> str:
    """stderr of the refused command, asserting it is exactly one line and no traceback (``after_progress``: a
    run refused once it has started may print progress bars first; its error is then the one last line)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if after_progress:
        err = err.rstrip("\n").rpartition("\n")[2] + "\n"
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 training rooms and 1 test room per type: a run over it takes seconds."""
    root = tmp_path_factory.mktemp("tiny")
    sample_set.write_sample_dataset(root, seed=0, rooms={"Training Data": 2, "Test Data": 1})
    return root


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="module")
def checkpoint(tiny_root: Path, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real local checkpoint after 2 batches (random backbone), as model_def.py writes it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = model_def.main(["--data-dir", str(tiny_root), "--batches", "2", "--cache-dir", str(tiny_cache),
                               "--checkpoint-dir", str(tmp_path_factory.mktemp("store")), *TINY])
    assert code == 0
    return Path(out.getvalue().strip().splitlines()[-1])


@pytest.fixture()
def copy(checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the checkpoint in its own store, for a test to tamper with."""
    target = tmp_path / "store" / checkpoint.name
    shutil.copytree(checkpoint, target)
    return target


def resume(copy: Path, tiny_root: Path, tiny_cache: Path, *extra: str) -> int:
    return model_def.main(["--data-dir", str(tiny_root), "--cache-dir", str(tiny_cache), "--resume", str(copy),
                           *TINY, *extra])


# --------------------------------------------------------------------------------------------
# --resume: trial_state.pkl, metadata.json, state_dict.pth, other hyperparameters
# --------------------------------------------------------------------------------------------


def test_a_real_trial_state_holds_only_plain_values(checkpoint: Path) -> None:
    state = pickle.loads((checkpoint / "trial_state.pkl").read_bytes())
    assert set(state) == resume_checks.TRIAL_STATE_KEYS and state["batches_trained"] == 2 and state["trial_id"] == 0
    resume_checks.check_trial_state(checkpoint / "trial_state.pkl", 2)  # accepted


def test_a_pickle_payload_in_trial_state_never_runs(copy: Path, tiny_root: Path, tiny_cache: Path,
                                                    tmp_path: Path, capsys) -> None:
    marker = tmp_path / "payload-ran"
    state_file = copy / "trial_state.pkl"
    state_file.write_bytes(pickle.dumps(SystemCall(marker)))
    before = digests(copy)
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4") == 2
    err = one_line(capsys)
    assert err.startswith(f"error: {state_file}: refused: the pickle names or calls Python objects (STACK_GLOBAL")
    assert not marker.exists()
    assert digests(copy) == before


@pytest.mark.parametrize(("blob", "words"), [
    (pickle.dumps({"trial_id": 0, "batches_trained": 2, "extra": 1}), "not a Determined trial state (expected"),
    (pickle.dumps({"trial_id": 0, "batches_trained": 7}), "batches_trained=7 disagrees with steps_completed=2"),
    (pickle.dumps({"trial_id": 0, "batches_trained": -2}), "not a Determined trial state (expected"),
    (pickle.dumps([1, 2, 3]), "not a Determined trial state (expected"),
    (b"\x80\x05\x95garbage", "not a Determined trial state ("),
    (b"", "not a Determined trial state ("),
], ids=["unknown-key", "disagrees", "negative", "list", "garbage", "empty"])
def test_a_bad_trial_state_is_one_line(blob: bytes, words: str, copy: Path, tiny_root: Path, tiny_cache: Path,
                                       capsys) -> None:
    (copy / "trial_state.pkl").write_bytes(blob)
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4") == 2
    err = one_line(capsys)
    assert err.startswith(f"error: {copy / 'trial_state.pkl'}: ") and words in err, err


def test_a_legacy_workload_sequencer_is_never_unpickled(copy: Path, tiny_root: Path, tiny_cache: Path,
                                                        tmp_path: Path, capsys) -> None:
    """Without trial_state.pkl, Determined unpickles workload_sequencer.pkl instead: model_def.py never writes it."""
    marker = tmp_path / "payload-ran"
    (copy / "trial_state.pkl").unlink()
    (copy / "workload_sequencer.pkl").write_bytes(pickle.dumps(SystemCall(marker)))
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4") == 2
    assert one_line(capsys).startswith(f"error: {copy / 'workload_sequencer.pkl'}: refused: a legacy Determined")
    assert not marker.exists()


def test_an_oversized_trial_state_is_never_read(copy: Path, tiny_root: Path, tiny_cache: Path, capsys) -> None:
    with (copy / "trial_state.pkl").open("wb") as f:
        f.truncate(resume_checks.MAX_TRIAL_STATE_BYTES + 1)
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4") == 2
    assert "more than the" in one_line(capsys)


@pytest.mark.parametrize(("text", "words"), [
    ('{"steps_completed": 1e12}', "steps_completed=1000000000000.0: expected a whole number of batches in [0, 4]"),
    ('{"steps_completed": -5}', "steps_completed=-5: expected a whole number of batches in [0, 4]"),
    ('{"steps_completed": true}', "steps_completed=True: expected a whole number"),
    ('{"steps_completed": "2"}', "steps_completed='2': expected a whole number"),
    ('{"steps": 2}', "expected a JSON object with steps_completed"),
    ("[2]", "expected a JSON object with steps_completed"),
    ('{"steps_completed": 2', "cannot read (JSONDecodeError"),
    ("[" * 100_000, "cannot read (RecursionError"),
    ("\xff\xfe", "cannot read (UnicodeDecodeError"),
])
def test_a_bad_metadata_json_is_one_line(text: str, words: str, copy: Path, tiny_root: Path, tiny_cache: Path,
                                         capsys) -> None:
    metadata = copy / "metadata.json"
    metadata.write_bytes(text.encode("latin-1"))
    before = digests(copy)
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4") == 2
    err = one_line(capsys)
    assert err.startswith(f"error: {metadata}: ") and words in err, err
    assert digests(copy) == before


def test_a_resume_past_the_runs_length_names_both(copy: Path, tiny_root: Path, tiny_cache: Path, capsys) -> None:
    """A checkpoint that has done more batches than --batches asks for is a usage error, not a damaged file."""
    (copy / "metadata.json").write_text(json.dumps({"steps_completed": 5}))
    before = digests(copy)
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4") == 2
    err = one_line(capsys)
    assert err.startswith(f"error: --resume {copy}: the checkpoint has already trained 5 batches"), err
    assert "--batches 4 is fewer" in err
    assert digests(copy) == before


def test_an_oversized_metadata_json_is_never_read(copy: Path, tiny_root: Path, tiny_cache: Path, capsys) -> None:
    with (copy / "metadata.json").open("wb") as f:
        f.truncate(run_config.MAX_METADATA_BYTES + 1)
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4") == 2
    assert "more than the" in one_line(capsys)


def test_steps_beyond_an_epoch_run_stop_before_skipping(copy: Path, tiny_root: Path, tiny_cache: Path,
                                                       capsys) -> None:
    """With --epochs the bound is known once the batches per epoch are: a huge claim never starts skipping."""
    (copy / "metadata.json").write_text(json.dumps({"steps_completed": 10**12}))
    (copy / "trial_state.pkl").write_bytes(pickle.dumps({"trial_id": 0, "batches_trained": 10**12}))
    assert resume(copy, tiny_root, tiny_cache, "--epochs", "1") == 2
    err = one_line(capsys, after_progress=True)
    assert err.startswith(f"error: {copy / 'metadata.json'}: steps_completed=1000000000000 is more than the ")
    assert err.endswith(" batches of 1 epoch(s) of this run\n")


def test_resuming_with_other_hyperparameters_names_them(copy: Path, tiny_root: Path, tiny_cache: Path,
                                                        capsys) -> None:
    before = digests(copy)
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4", "--hparam", "tie_twins=true") == 2
    assert one_line(capsys) == (f"error: --resume {copy}: the checkpoint was trained with other hyperparameters "
                                "(tie_twins=False there, True here); give the --config/--hparam it was trained with\n")
    # Without the hyperparameters in load_data.json, the weights' names tell (no state_dict traceback).
    load_data = json.loads((copy / "load_data.json").read_text())
    (copy / "load_data.json").write_text(json.dumps({**load_data, "hparams": {}}))
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4", "--hparam", "tie_twins=true") == 2
    assert one_line(capsys) == (f"error: {copy}: the checkpoint was trained with other hyperparameters (weights "
                                "unexpected twins.1.0.bias, twins.1.0.weight); give the --config/--hparam it was "
                                "trained with\n")
    assert {k: v for k, v in digests(copy).items() if k != "load_data.json"} == {
        k: v for k, v in before.items() if k != "load_data.json"}


def test_a_checkpoint_without_state_dict_is_one_line(copy: Path, tiny_root: Path, tiny_cache: Path,
                                                     capsys) -> None:
    (copy / "state_dict.pth").unlink()
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4") == 2
    assert one_line(capsys).startswith(f"error: {copy}: no state_dict.pth: not a complete checkpoint")


# --------------------------------------------------------------------------------------------
# Configs and --hparam values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "words"), [
    ("learning_rate=!!python/object/apply:os.system ['touch {marker}']",
     "not a YAML value (could not determine a constructor for the tag"),
    ("learning_rate=a: b: c", "not a YAML value (mapping values are not allowed here)"),
    ("learning_rate=[[[", "not a YAML value ("),
    ("learning_rate=1e30", "hyperparameter learning_rate=1e+30: expected float in (0, 1]"),
    ("learning_rate=1e308", "hyperparameter learning_rate=1e+308: expected float in (0, 1]"),
    ("learning_rate=1e999", "hyperparameter learning_rate=inf: expected a finite number"),
    ("alpha=1", "hyperparameter alpha=1: expected float in [0, 1)"),
    ("dropout2=1", "hyperparameter dropout2=1: expected float in [0, 1)"),
    ("global_batch_size=1000000000", "hyperparameter global_batch_size=1000000000: expected int in [1, 65536]"),
    ("head_rank=100000", "hyperparameter head_rank=100000: expected int in [1, 4096]"),
    ("global_batch_size=.inf", "hyperparameter global_batch_size=inf: expected a finite number"),
    ("learning_rate=" + "9" * 4000, "expected a finite number"),
    ("learning_rate=" + "9" * 5000, "not a YAML value (Exceeds the limit"),
    ("=3", "--hparam '=3': expected KEY=VALUE"),
])
def test_a_bad_hparam_is_one_line(item: str, words: str, sample_root: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "payload-ran"
    code = model_def.main(["--data-dir", str(sample_root), "--batches", "1", "--cache-dir", "none",
                           "--hparam", item.replace("{marker}", str(marker))])
    err = one_line(capsys)
    assert code == 2 and words in err and len(err) < 400, err
    assert not marker.exists()


@pytest.mark.parametrize(("text", "words"), [
    ("hyperparameters:\n  - learning_rate\n", "'hyperparameters' must be a mapping of names to values, not a list"),
    ("hyperparameters:\n  1: 2\n", "hyperparameter name 1 is not a string"),
    ("hyperparameters:\n  learning_rate: {type: const}\n", "hyperparameter learning_rate: a const needs 'val'"),
    ("hyperparameters: !!python/object/apply:os.system ['touch {marker}']\n",
     "cannot read (ConstructorError: could not determine a constructor"),
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     "more than 100000 values once its YAML aliases are expanded"),
    ("description: 2024-01-01\nhyperparameters: {}\n", "holds values JSON cannot store"),
    ("- a list\n", "not an experiment config (a YAML mapping)"),
    ("\xff\xfe\x00", "cannot read (UnicodeDecodeError"),
])
def test_a_bad_config_is_one_line(text: str, words: str, sample_root: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "payload-ran"
    config = tmp_path / "config.yaml"
    config.write_bytes(text.replace("{marker}", str(marker)).encode("latin-1"))
    before = digests(tmp_path)
    code = model_def.main(["--data-dir", str(sample_root), "--batches", "1", "--cache-dir", "none",
                           "--config", str(config)])
    err = one_line(capsys)
    assert code == 2 and words in err, err
    assert not marker.exists() and digests(tmp_path) == before


def test_an_oversized_or_special_config_is_never_read(sample_root: Path, tmp_path: Path, capsys) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(run_config.MAX_CONFIG_BYTES + 1)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    for config, words in ((big, "more than the"), (fifo, "not a regular file")):
        assert model_def.main(["--data-dir", str(sample_root), "--batches", "1", "--config", str(config)]) == 2
        err = one_line(capsys)
        assert f"--config {config}: cannot read" in err and words in err, err


# --------------------------------------------------------------------------------------------
# Divergence and non-finite weights
# --------------------------------------------------------------------------------------------


def test_a_diverging_run_stops_and_writes_no_checkpoint(tiny_root: Path, tiny_cache: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    logits = model_def.SiameseTrial._logits

    def nan_logits(self: model_def.SiameseTrial, batch, split: str):
        out, label = logits(self, batch, split)
        return out * float("nan"), label  # what a learning rate far too large leads to

    monkeypatch.setattr(model_def.SiameseTrial, "_logits", nan_logits)
    store = tmp_path / "store"
    before = digests(tiny_root)
    assert model_def.main(["--data-dir", str(tiny_root), "--batches", "2", "--cache-dir", str(tiny_cache),
                           "--checkpoint-dir", str(store), *TINY]) == 2
    assert one_line(capsys, after_progress=True) == (
        "error: training diverged: the loss is nan at batch 0; lower learning_rate "
        "(no checkpoint was written for this state)\n")
    assert list(store.iterdir()) == []
    assert digests(tiny_root) == before


def test_weights_that_step_to_infinity_stop_the_run(tiny_root: Path, tiny_cache: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    step = torch.optim.RMSprop.step

    def overflow(self: torch.optim.RMSprop, closure=None):
        out = step(self, closure)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.RMSprop, "step", overflow)
    store = tmp_path / "store"
    assert model_def.main(["--data-dir", str(tiny_root), "--batches", "2", "--cache-dir", str(tiny_cache),
                           "--checkpoint-dir", str(store), *TINY]) == 2
    err = one_line(capsys, after_progress=True)
    assert "training diverged: " in err and "became NaN or infinite at batch 0" in err, err
    assert list(store.iterdir()) == []


def test_a_checkpoint_with_non_finite_weights_is_refused(copy: Path, tiny_root: Path, tiny_cache: Path,
                                                         capsys) -> None:
    state_file = copy / "state_dict.pth"
    state = torch.load(state_file, weights_only=False)
    name = next(k for k, v in state["models_state_dict"][0].items() if v.is_floating_point())
    state["models_state_dict"][0][name][0] = float("nan")
    torch.save(state, state_file)
    before = digests(copy)
    with pytest.raises(checkpoint_loading.CheckpointError, match=f"weight {name} is NaN or infinite"):
        checkpoint_loading.load_model(copy)
    expected = f"error: {state_file}: weight {name} is NaN or infinite: the run that wrote this checkpoint diverged"
    test_split = str(tiny_root / "Test Data")
    assert evaluate.main(["--checkpoint", str(copy), "--data-dir", test_split, "--cache-dir", "none"]) == 2
    assert one_line(capsys).startswith(expected)
    assert find.main([str(tiny_root / "Test Data"), "--checkpoint", str(copy), "--no-progress"]) == 2
    assert one_line(capsys).startswith(expected)
    assert resume(copy, tiny_root, tiny_cache, "--batches", "4") == 2
    assert one_line(capsys).startswith(expected)
    assert digests(copy) == before


# --------------------------------------------------------------------------------------------
# Real-photo manifests
# --------------------------------------------------------------------------------------------


def _manifest_set(tmp_path: Path, manifest: bytes) -> Path:
    folder = tmp_path / "set"
    (folder / "Test Data").mkdir(parents=True)
    (folder / "manifest.csv").write_bytes(manifest)
    return folder


@pytest.mark.parametrize(("manifest", "words"), [
    (b"split,path,group,shot\nTest Data,Test Data/a_1_1.jpg,a,1\n", "no sha256 column(s); expected the columns"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", "not a UTF-8 CSV manifest (byte"),
    (b"path,group,shot,sha256\n" + b"a" * 200_000 + b",a,1,00\n", "not a CSV manifest (line"),
    (b"path,group,shot,sha256\nTest Data/a_1_1.jpg,a\n", "row 2 has fewer fields than the header"),
])
def test_a_bad_manifest_is_one_line(manifest: bytes, words: str, tmp_path: Path, capsys) -> None:
    folder = _manifest_set(tmp_path, manifest)
    before = digests(folder)
    assert real_photos.main(["verify", str(folder)]) == 2
    err = one_line(capsys)
    assert err.startswith(f"error: {folder / 'manifest.csv'}: ") and words in err, err
    assert digests(folder) == before


def test_an_oversized_manifest_is_never_read_and_paths_stay_inside(tmp_path: Path, capsys) -> None:
    folder = _manifest_set(tmp_path, b"")
    with (folder / "manifest.csv").open("wb") as f:
        f.truncate(manifests.MAX_MANIFEST_BYTES + 1)
    assert real_photos.main(["verify", str(folder)]) == 2
    assert f"more than {manifests.MAX_MANIFEST_BYTES} bytes" in one_line(capsys)

    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"not in the set")
    rows = f"path,group,shot,sha256\n{outside},a,1,00\n../outside.jpg,a,1,00\n"
    (folder / "manifest.csv").write_text(rows)
    assert manifests.verify(folder) == [f"{str(outside)!r}: not a path inside {folder}",
                                 f"'../outside.jpg': not a path inside {folder}"]
