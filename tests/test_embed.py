"""embed.py: the embedding job, under torchrun with 2 processes and with one, gives the same store and groups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samespace import embedding_store
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
