"""samespace.find_duplicates refuses bad arguments as the command line does: one FindDuplicatesError naming the value
or the file, before any photo is read, and never replaces a file SameSpace did not write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_actions import write_scene
from test_checkpoint_safety import write_checkpoint

import samespace
from samespace import api, outputs
from samespace.siamese import SiameseNetwork

FindDuplicatesError = samespace.FindDuplicatesError


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """A folder of small photos: phash finds groups of 3 (a) and 2 (b), and c alone (test_actions.write_scene)."""
    write_scene(tmp_path / "photos")
    return tmp_path / "photos"


@pytest.fixture(scope="module")
def checkpoint_state() -> dict:
    """The state of a checkpoint with random efficientnet_lite0 weights (loads without any download)."""
    torch.manual_seed(0)
    return {"models_state_dict": [SiameseNetwork(backbone="efficientnet_lite0", backbone_weights="none").state_dict()]}


def _names(groups: list[list[str]]) -> list[list[str]]:
    return [sorted(Path(p).name for p in group) for group in groups]


# --------------------------------------------------------------------------------------------
# The store never replaces a file SameSpace did not write
# --------------------------------------------------------------------------------------------


def test_a_user_file_named_as_the_store_is_refused_and_kept(photos: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a store\n")
    before = notes.read_bytes()
    with pytest.raises(FindDuplicatesError,
                       match=r"^store .*notes\.txt: exists and was not written by SameSpace; pass overwrite=True"):
        samespace.find_duplicates(photos, method="phash", store=notes)
    assert notes.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]  # no store written beside it


def test_a_find_result_named_as_the_store_is_refused_and_kept(photos: Path, tmp_path: Path) -> None:
    result = tmp_path / "groups.json"
    result.write_text('{\n "groups": []}\n')  # the first bytes of find --json
    before = result.read_bytes()
    refused = r"groups\.json: holds a find result \(JSON\), not an embedding store"
    with pytest.raises(FindDuplicatesError, match=refused):
        samespace.find_duplicates(photos, method="phash", store=str(result))
    assert result.read_bytes() == before


def test_a_photo_is_never_the_store_even_with_overwrite(photos: Path) -> None:
    photo = photos / "c.png"
    before = photo.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(FindDuplicatesError, match=r"c\.png: is one of the input photos"):
            samespace.find_duplicates(photos, method="phash", store=photo, overwrite=overwrite)
        assert photo.read_bytes() == before


def test_overwrite_replaces_a_user_file_with_a_store_that_later_runs_reuse(photos: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("scratch\n")
    with pytest.warns(UserWarning, match=r"notes\.txt: ignoring the embedding store .*it will be rebuilt"):
        first = samespace.find_duplicates(photos, method="phash", store=notes, overwrite=True)
    assert outputs.file_kind(notes) == outputs.STORE
    again = samespace.find_duplicates(photos, method="phash", store=notes)  # now SameSpace's own: no flag needed
    assert again.groups == first.groups
    assert _names(again.groups) == [["a.png", "a_big.png", "a_copy.png"], ["b.jpg", "b.png"]]


# --------------------------------------------------------------------------------------------
# A damaged checkpoint is a FindDuplicatesError naming the file
# --------------------------------------------------------------------------------------------


def test_another_methods_store_is_kept_unless_overwrite(photos: Path, tmp_path: Path) -> None:
    """A store of another method may hold hours of embeddings: a mistyped method must not rebuild it."""
    store = tmp_path / "photos.npz"
    samespace.find_duplicates(photos, method="phash", store=store)
    before = store.read_bytes()
    with pytest.raises(FindDuplicatesError, match=r"photos\.npz: an embedding store made by phash, not whash; it is "
                       r"read with method='phash'; pass overwrite=True to replace it, or choose another store$"):
        samespace.find_duplicates(photos, method="whash", store=store)
    assert store.read_bytes() == before
    with pytest.warns(UserWarning, match="ignoring the embedding store"):
        samespace.find_duplicates(photos, method="whash", store=store, overwrite=True)
    assert store.read_bytes() != before


def test_a_truncated_checkpoint_is_a_find_duplicates_error(photos: Path, tmp_path: Path,
                                                           checkpoint_state: dict) -> None:
    folder = write_checkpoint(tmp_path / "truncated", checkpoint_state)
    state_file = folder / "state_dict.pth"
    state_file.write_bytes(state_file.read_bytes()[: state_file.stat().st_size // 2])
    with pytest.raises(FindDuplicatesError, match=r"state_dict\.pth: damaged or truncated") as raised:
        samespace.find_duplicates(photos, checkpoint=folder)
    assert str(state_file) in str(raised.value)
    assert isinstance(raised.value.__cause__, ValueError)  # the checkpoint's own error, chained
    with pytest.raises(FindDuplicatesError, match=r"nowhere: checkpoint folder not found"):
        samespace.find_duplicates(photos, checkpoint=tmp_path / "nowhere")


def test_a_damaged_threshold_file_is_a_find_duplicates_error(photos: Path, tmp_path: Path,
                                                             checkpoint_state: dict) -> None:
    folder = write_checkpoint(tmp_path / "checkpoint", checkpoint_state)
    (folder / "samespace_threshold.json").write_text('{"threshold": ')
    with pytest.raises(FindDuplicatesError, match=r"samespace_threshold\.json: expected \{\"threshold\"") as raised:
        samespace.find_duplicates(photos, checkpoint=folder)
    assert str(folder / "samespace_threshold.json") in str(raised.value)
    (folder / "samespace_threshold.json").write_text(json.dumps({"threshold": 7}))
    with pytest.raises(FindDuplicatesError, match=r"samespace_threshold\.json: threshold 7"):
        samespace.find_duplicates(photos, checkpoint=folder)


# --------------------------------------------------------------------------------------------
# Arguments: the command line's choices and ranges
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["foo", "Calibrated", "model", "default", ""])
def test_an_unknown_method_names_the_valid_ones(photos: Path, method: str) -> None:
    with pytest.raises(FindDuplicatesError) as raised:
        samespace.find_duplicates(photos, method=method)
    assert str(raised.value) == (f"method {method!r}: expected one of whash, phash, cosine, relative, verified, "
                                 "calibrated")


def test_against_takes_one_folder_as_a_string_or_a_path(photos: Path, tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(photos / "c.png", new / "c_again.png")
    for library in (str(photos), photos):
        found = samespace.find_duplicates(str(new), method="phash", against=library)
        assert _names(found.groups) == [["c.png", "c_again.png"]]
    with pytest.raises(FindDuplicatesError, match=r"^nowhere: not a directory$"):
        samespace.find_duplicates(new, method="phash", against="nowhere")


def test_a_threshold_must_be_a_real_number_in_the_score_range(photos: Path) -> None:
    refused = [(5, "threshold 5: expected a number in [0, 1] for phash scores"),
               (-0.1, "threshold -0.1: expected a number in [0, 1] for phash scores"),
               (float("nan"), "threshold nan: expected a number in [0, 1] for phash scores"),
               ("0.9", "threshold '0.9': expected a number"),
               (True, "threshold True: expected a number"),
               ([0.9], "threshold [0.9]: expected a number")]
    for threshold, message in refused:
        with pytest.raises(FindDuplicatesError) as raised:
            samespace.find_duplicates(photos, method="phash", threshold=threshold)  # type: ignore[arg-type]
        assert str(raised.value) == message
    found = samespace.find_duplicates(photos, method="phash", threshold=1)  # an int in range: used as a float
    assert found.threshold == 1.0 and isinstance(found.threshold, float)
    assert _names(found.groups) == [["a.png", "a_copy.png"]]  # only the byte copy scores 1


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True, "8"])
def test_batch_size_must_be_a_positive_whole_number(photos: Path, batch_size: object) -> None:
    with pytest.raises(FindDuplicatesError) as raised:
        samespace.find_duplicates(photos, method="phash", batch_size=batch_size)  # type: ignore[arg-type]
    assert str(raised.value) == f"batch_size {batch_size!r}: expected a whole number >= 1"


@pytest.mark.parametrize("device", ["gpu", "GPU", "cuda:0", "mps", ""])
def test_a_device_the_command_line_refuses_is_refused(photos: Path, device: str) -> None:
    with pytest.raises(FindDuplicatesError) as raised:
        samespace.find_duplicates(photos, method="phash", device=device)
    assert str(raised.value) == f"device {device!r}: expected one of auto, cpu, cuda"


def test_cuda_without_a_gpu_is_refused_as_the_command_line_does(photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FindDuplicatesError, match=r"^device cuda: no CUDA device available$"):
        samespace.find_duplicates(photos, method="phash", device="cuda")
    assert samespace.find_duplicates(photos, method="phash", device="auto").groups  # auto: the CPU


def test_an_unknown_precision_is_refused(photos: Path) -> None:
    with pytest.raises(FindDuplicatesError) as raised:
        samespace.find_duplicates(photos, method="phash", precision="fp64")
    assert str(raised.value) == "precision 'fp64': expected one of fp32, bf16, fp16"


# --------------------------------------------------------------------------------------------
# What the documentation says
# --------------------------------------------------------------------------------------------


def test_groups_come_largest_first_as_the_module_says(photos: Path) -> None:
    found = samespace.find_duplicates(photos, method="phash")
    assert [len(g) for g in found.groups] == [3, 2]
    assert "the largest groups first" in api.__doc__ and "best-scoring pairs first" not in api.__doc__
