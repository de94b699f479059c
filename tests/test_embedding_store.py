"""The embedding store (embedding_store.py) and what find_duplicates.py does with it: --no-cache, --store,
--embeddings, --against, and the rows an interrupted run keeps."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import samespace
from samespace import (
    cli,
    embedding_job,
    embedding_store,
    run_memory,
    scorers,
    store_format,
    store_identity,
    store_rows,
)
from samespace.commands import find


@pytest.fixture()
def library(tmp_path: Path, test_dir: Path) -> Path:
    """A private copy of the sample Test Data (its own stat entries and mtimes)."""
    return Path(shutil.copytree(test_dir, tmp_path / "library"))


def _cli(argv: list[str], tmp_path: Path, name: str = "out.json") -> dict:
    out = tmp_path / name
    code = find.main([*argv, "--method", "phash", "--no-progress", "--json", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def _groups(document: dict, root: Path) -> list[list[str]]:
    """Groups as sorted relative names (independent of where the photos are)."""
    return sorted(sorted(Path(m).relative_to(root).as_posix() for m in g["members"]) for g in document["groups"])


def test_second_run_embeds_only_new_photos_and_gives_the_same_groups(library: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.npz"
    reference = _cli([str(library), "--no-cache"], tmp_path, "ref.json")
    assert reference["summary"]["store"] is None and reference["summary"]["embedded"] == reference["summary"]["images"]
    first = _cli([str(library), "--store", str(store)], tmp_path)
    n = first["summary"]["images"]
    assert first["summary"]["embedded"] == n and store.is_file()
    second = _cli([str(library), "--store", str(store)], tmp_path)
    assert second["summary"]["embedded"] == 0 and second["summary"]["from_store"] == n
    assert _groups(second, library) == _groups(first, library) == _groups(reference, library)
    assert len(reference["groups"]) >= 3
    # moved + renamed: recognised by content; an edited photo (new bytes) and a new photo are embedded
    photos = sorted(library.rglob("*.jpg"))
    photos[0].rename(library / "renamed.jpg")
    (library / "moved").mkdir()
    photos[1].rename(library / "moved" / photos[1].name)
    photos[2].write_bytes(photos[2].read_bytes() + b"\0")  # still decodes, other content key
    shutil.copy(photos[3], library / "new-copy.jpg")  # same bytes as a stored photo: nothing to embed
    third = _cli([str(library), "--store", str(store)], tmp_path)
    assert third["summary"]["images"] == n + 1
    assert third["summary"]["embedded"] == 1 and third["summary"]["from_store"] == n
    assert [str(library / "new-copy.jpg"), str(photos[3])] in [p[:2] for p in third["pairs"]] or \
        [str(photos[3]), str(library / "new-copy.jpg")] in [p[:2] for p in third["pairs"]]


def test_damaged_store_is_ignored_with_one_warning_and_rebuilt(library: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.npz"
    reference = _cli([str(library), "--no-cache"], tmp_path, "ref.json")
    _cli([str(library), "--store", str(store)], tmp_path)
    content = store.read_bytes()
    damaged = {
        "truncated": content[: len(content) // 2],
        "garbage": b"not a store at all",
        "flipped": content[:2000] + bytes(b ^ 0xFF for b in content[2000:2600]) + content[2600:],
    }
    for kind, payload in damaged.items():
        store.write_bytes(payload)
        # a file without the store's header is somebody else's file: replaced only with --overwrite
        foreign = ["--overwrite"] if kind == "garbage" else []
        if foreign:
            assert find.main([str(library), "--store", str(store), "--method", "phash", "--no-progress"]) == 2
            assert store.read_bytes() == payload
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            document = _cli([str(library), "--store", str(store), *foreign], tmp_path)
        messages = [str(w.message) for w in caught if "embedding store" in str(w.message)]
        assert len(messages) == 1 and "ignoring" in messages[0], (kind, messages)
        assert document["summary"]["embedded"] == document["summary"]["images"], kind  # nothing trusted
        assert _groups(document, library) == _groups(reference, library), kind
        again = _cli([str(library), "--store", str(store)], tmp_path)  # rebuilt: valid again
        assert again["summary"]["embedded"] == 0, kind


def test_foreign_store_is_never_used(library: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.npz"
    _cli([str(library), "--store", str(store)], tmp_path)  # phash
    before = store.read_bytes()
    code = find.main([str(library), "--method", "whash", "--no-progress", "--store", str(store)])
    assert code == 2 and store.read_bytes() == before  # another method's store is kept: --overwrite replaces it
    code = find.main([str(library), "--method", "whash", "--no-progress", "--store", str(store), "--overwrite"])
    assert code == 0  # the whash run ignored the phash store (one warning) and replaced it
    fingerprint = store_identity.scorer_fingerprint(scorers.HashScorer("whash"))
    reread = embedding_store.EmbeddingStore.load(store, fingerprint, "whash", scorers.HashScorer.fields)
    assert len(reread) == len(list(library.rglob("*.jpg")))
    with pytest.raises(store_format.StoreError, match="another scorer"):
        embedding_store.EmbeddingStore.load(store, store_identity.scorer_fingerprint(scorers.HashScorer("phash")),
                                            "phash", scorers.HashScorer.fields)


def test_store_round_trip_validates_and_writes_the_same_bytes(tmp_path: Path) -> None:
    fields = {"vectors": "float32", "codes": "uint64"}
    store = embedding_store.EmbeddingStore("f" * 64, "cosine", fields)
    rng = np.random.default_rng(0)
    keys = [f"{k:032x}" for k in (3, 1, 2)]
    vectors = rng.normal(size=(3, 5)).astype(np.float32)
    store.add(keys, {"vectors": vectors, "codes": np.arange(3, dtype=np.uint64)})
    store.add(keys[:1], {"vectors": vectors[:1] + 1, "codes": np.zeros(1, np.uint64)})  # known key: ignored
    path = tmp_path / "s.npz"
    store.save(path)
    loaded = embedding_store.EmbeddingStore.load(path, "f" * 64, "cosine", fields)
    np.testing.assert_array_equal(loaded.get(keys)["vectors"], vectors)
    assert loaded.to_bytes() == store.to_bytes()
    with np.load(path, allow_pickle=False) as z:  # readable without pickle
        assert json.loads(bytes(z["header"]))["rows"] == 3
    nan = vectors.copy()
    nan[0, 0] = np.nan
    bad = embedding_store.EmbeddingStore("f" * 64, "cosine", fields, path)
    with pytest.raises(store_format.StoreError, match=f"^{path}: cannot add rows: field vectors: non-finite"):
        bad.add(keys, {"vectors": nan, "codes": np.arange(3, dtype=np.uint64)})  # never written: it would be refused
    assert len(bad) == 0
    with np.load(path, allow_pickle=False) as z:  # a file holding them anyway is refused when read
        members = {name: z[name] for name in z.files}
    members["field_vectors"] = nan
    with open(path, "wb") as f:
        np.savez(f, **members)
    with pytest.raises(store_format.StoreError, match=f"^{path}: unusable embedding store .*non-finite"):
        embedding_store.EmbeddingStore.load(path, "f" * 64, "cosine", fields)


def test_against_reports_only_cross_pairs_and_embeds_only_new_photos(library: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.npz"
    _cli([str(library), "--store", str(store)], tmp_path)  # the library run fills the store
    photos = sorted(library.rglob("*.jpg"))
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(photos[0], new / "copy-of-first.jpg")  # duplicate of a library photo (and its room mates)
    (new / "copy-of-first.jpg").write_bytes((new / "copy-of-first.jpg").read_bytes() + b"\0")  # not in the store
    shutil.copy(photos[5], new / "copy-of-sixth.jpg")  # same bytes as a stored photo
    document = _cli([str(new), "--against", str(library), "--store", str(store)], tmp_path)
    summary = document["summary"]
    assert summary["new_images"] == 2 and summary["library_images"] == len(photos)
    assert summary["embedded"] == 1  # the library and the byte-identical copy come from the store
    new_names = {str(new / "copy-of-first.jpg"), str(new / "copy-of-sixth.jpg")}
    assert document["pairs"]
    for a, b, *_ in document["pairs"]:
        assert (a in new_names) != (b in new_names)  # only cross pairs
    assert {g["members"][0] for g in document["groups"]} == new_names  # one group per new photo, new first
    assert [str(new / "copy-of-first.jpg"), str(photos[0])] in [p[:2] for p in document["pairs"]]
    # the library alone has pairs among itself; none of them are reported
    assert not any(a.startswith(str(library)) and b.startswith(str(library)) for a, b, *_ in document["pairs"])


def test_embeddings_store_alone_groups_without_opening_photos(library: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.npz"
    first = _cli([str(library), "--store", str(store)], tmp_path)
    library.rename(tmp_path / "elsewhere")  # the photos are gone (a store made on a cluster, read here)
    document = _cli(["--embeddings", str(store)], tmp_path, "e.json")
    assert document["summary"]["embedded"] == 0 and document["summary"]["skipped"] == 0
    assert _groups(document, library.resolve()) == _groups(first, library)
    assert find.main(["--embeddings", str(tmp_path / "missing.npz"), "--method", "phash"]) == cli.EXIT_ERROR


def _ctrl_c_after_the_second_batch(monkeypatch: pytest.MonkeyPatch, signum: int = signal.SIGINT) -> None:
    """A real SIGINT (or ``signum``) right after the finder adds its second batch of rows to the store."""
    batches: list[int] = []

    def then_interrupt(store: embedding_store.EmbeddingStore) -> None:
        batches.append(len(store))
        if len(batches) == 2:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(run_memory, "save_early", then_interrupt)


@pytest.mark.parametrize("how", ["find", "embed", "api"])
def test_ctrl_c_keeps_the_rows_embedded_so_far_and_the_next_run_goes_on_from_them(
        library: Path, tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store.npz"
    _ctrl_c_after_the_second_batch(monkeypatch)
    kept = f"kept 8 embeddings in {store}: the next run goes on from them"
    if how == "api":
        with pytest.raises(KeyboardInterrupt):
            samespace.find_duplicates(library, method="phash", batch_size=4, progress=False, store=store)
        assert capsys.readouterr().err.splitlines()[-1] == kept
    else:
        argv = [how, str(library), "--method", "phash", "--batch-size", "4", "--store", str(store)]
        assert cli.main(argv + (["--no-progress"] if how == "find" else [])) == cli.EXIT_INTERRUPTED
        assert capsys.readouterr().err.splitlines()[-2:] == [kept, "interrupted"]
    monkeypatch.undo()
    reference = _cli([str(library), "--no-cache"], tmp_path, "ref.json")
    resumed = _cli([str(library), "--store", str(store)], tmp_path)
    assert resumed["summary"]["from_store"] == 8
    assert resumed["summary"]["embedded"] == reference["summary"]["images"] - 8
    assert _groups(resumed, library) == _groups(reference, library)


def test_ctrl_c_inside_add_acts_once_every_row_is_added(monkeypatch: pytest.MonkeyPatch) -> None:
    store = embedding_store.EmbeddingStore("f" * 64, "cosine", {"vectors": "float32"})
    real = store_rows.RowBlocks.append

    def interrupt_then_append(self: store_rows.RowBlocks, rows: dict[str, np.ndarray]) -> int:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the checks, before the store holds a row
        return real(self, rows)

    monkeypatch.setattr(store_rows.RowBlocks, "append", interrupt_then_append)
    keys = [f"{k:032x}" for k in range(3)]
    with pytest.raises(KeyboardInterrupt):
        store.add(keys, {"vectors": np.eye(3, 5, dtype=np.float32)})
    assert len(store) == 3 and store.changed
    np.testing.assert_array_equal(store.get(keys)["vectors"], np.eye(3, 5, dtype=np.float32))


def test_embed_counts_the_photos_it_embedded_and_a_second_run_none(library: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    store, n = tmp_path / "store.npz", len(list(library.rglob("*.jpg")))
    with caplog.at_level(logging.INFO, logger="samespace.embed"):
        for _ in range(2):
            assert cli.main(["embed", str(library), "--method", "phash", "--store", str(store)]) == 0
    assert [r.getMessage() for r in caplog.records if "distinct contents" in r.getMessage()] == [
        f"{store}: {n} photos, {n} distinct contents, {n} new", f"{store}: {n} photos, {n} distinct contents, 0 new"]


@pytest.mark.parametrize("how", ["find", "embed"])
def test_kill_keeps_the_rows_as_ctrl_c_does_and_exits_143(library: Path, tmp_path: Path, how: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store.npz"
    _ctrl_c_after_the_second_batch(monkeypatch, signal.SIGTERM)
    argv = [how, str(library), "--method", "phash", "--batch-size", "4", "--store", str(store)]
    assert cli.main(argv) == cli.EXIT_TERMINATED == 143
    assert capsys.readouterr().err.splitlines()[-2:] == [
        f"kept 8 embeddings in {store}: the next run goes on from them", "terminated"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the command's handler is gone with it
    monkeypatch.undo()
    assert _cli([str(library), "--store", str(store)], tmp_path)["summary"]["from_store"] == 8


def test_a_paused_embed_job_saves_its_rows_and_the_resumed_job_embeds_the_rest(
        library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    store, n = tmp_path / "store.npz", len(list(library.rglob("*.jpg")))
    asked: list[int] = []

    def pause_now() -> bool:  # the master pauses the job at once
        asked.append(1)
        return True

    @contextlib.contextmanager
    def paused_master(distributed: bool) -> Iterator[embedding_job.Reports]:
        yield embedding_job.Reports(lambda fraction: None, lambda steps, metrics: None, pause_now)

    monkeypatch.setattr(embedding_job, "reports", paused_master)
    argv = ["embed", str(library), "--method", "phash", "--batch-size", "2", "--store", str(store)]
    with caplog.at_level(logging.INFO, logger="samespace.embed"):
        assert cli.main(argv) == 0  # a pause is no failure: the master restarts the job when it resumes
    assert capsys.readouterr().out.splitlines()[-1] == str(store)
    chunk = embedding_job.CHUNK_BATCHES * 2
    assert n > chunk and asked == [1]  # asked after the first chunk, and stopped there
    assert f"rank 0: stopped by the master; {chunk} embeddings saved in {store}, a resumed job goes on from them" in [
        r.getMessage() for r in caplog.records]
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="samespace.embed"):
        assert cli.main(argv) == 0
    assert f"{store}: {n} photos, {n} distinct contents, {n - chunk} new" in [r.getMessage() for r in caplog.records]
