"""embed.py: the embedding job, under torchrun with 2 processes and with one, gives the same store and groups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samespace import embedding_job, embedding_store
from samespace.commands import find

pytestmark = pytest.mark.slow  # trains, runs several processes or installs packages

REPO = Path(__file__).resolve().parent.parent


def _embed(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def _load(path: Path) -> embedding_store.EmbeddingStore:
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(bytes(z["header"]))
    fields = {name: spec[0] for name, spec in header["fields"].items()}
    return embedding_store.EmbeddingStore.load(path, header["fingerprint"], header["method"], fields)


def test_two_processes_give_the_store_and_groups_of_one(test_dir: Path, tmp_path: Path) -> None:
    # whash: no backbone to load in each process, so the test stays fast; the sharding and merging are the same
    options = ["--method", "whash", "--batch-size", "8"]
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    single = _embed([sys.executable, str(REPO / "embed.py"), str(test_dir), "--store", str(one), *options], REPO)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    double = _embed([*torchrun, str(REPO / "embed.py"), str(test_dir), "--store", str(two), *options], REPO)
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.strip().splitlines()[-1] == str(two)  # the chief prints the store, once
    assert double.stdout.count(str(two)) == 1
    assert "rank 1: embedded" in double.stderr and not list(tmp_path.glob("*.part-*"))  # both ranks, parts merged
    a, b = _load(one), _load(two)
    assert a.keys() == b.keys() and len(a) == len(list(test_dir.rglob("*.jpg")))
    assert a.stat_entries() == b.stat_entries()
    np.testing.assert_array_equal(a.get(a.keys())["codes"], b.get(a.keys())["codes"])
    assert one.read_bytes() == two.read_bytes()  # rows sorted by content key: the very same file
    groups = []
    for store in (one, two):
        out = tmp_path / f"{store.stem}.json"
        assert find.main(["--embeddings", str(store), "--method", "whash", "--no-progress", "--json", str(out)]) == 0
        document = json.loads(out.read_text())
        assert document["summary"]["embedded"] == 0
        groups.append([g["members"] for g in document["groups"]])
    assert groups[0] == groups[1] and len(groups[0]) >= 2


PAUSED_ON_RANK_1 = '''
import contextlib, os, sys
from samespace import cli, embedding_job
from samespace.commands import embed


@contextlib.contextmanager
def reports(distributed):  # a stand-in master: it pauses the job when rank 1 asks; rank 0 is never told, and finishes
    rank = int(os.environ["RANK"])
    yield embedding_job.Reports(lambda fraction: None, lambda steps, metrics: None, lambda: rank == 1)


embedding_job.reports = reports
sys.exit(cli.run_stoppably(embed.main))
'''


def test_a_rank_that_finished_when_another_is_paused_saves_its_rows_and_exits(test_dir: Path,
                                                                               tmp_path: Path) -> None:
    script, store = tmp_path / "paused_embed.py", tmp_path / "store.npz"
    script.write_text(PAUSED_ON_RANK_1)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # rank 0 must not wait at the merge for rank 1, which has left: an error or a hang, its rows only in a part file
    paused = subprocess.run([*torchrun, str(script), str(test_dir), "--store", str(store), "--method", "whash",
                             "--batch-size", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert paused.returncode == 0, paused.stderr[-3000:]
    n, chunk = len(list(test_dir.rglob("*.jpg"))), embedding_job.CHUNK_BATCHES  # rank 1 stops after one chunk
    share = n // 2
    assert n % 2 == 0 and share > chunk
    assert (f"rank 1: stopped by the master; {chunk} embeddings saved in {store}, a resumed job goes on from them"
            in paused.stderr)
    assert (f"rank 0: finished its share, another rank was stopped by the master; {share} embeddings saved in "
            f"{store}, a resumed job goes on from them" in paused.stderr)
    assert not list(tmp_path.glob("*.part-*"))
    assert len(_load(store).stat_entries()) == share + chunk  # both ranks' rows are in the store
    resumed = _embed([sys.executable, str(REPO / "embed.py"), str(test_dir), "--store", str(store), "--method",
                      "whash", "--batch-size", "1"], REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{store}: {n} photos" in resumed.stderr and f", {n - share - chunk} new" in resumed.stderr
