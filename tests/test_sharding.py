"""sharding: shares of a range per rank, and gathering row tables across processes (torchrun, gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from samespace import sharding

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("n", [0, 1, 5, 64, 233])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_shares_are_contiguous_and_cover_the_range(n: int, size: int) -> None:
    shares = [sharding.Shard(rank, size).indices(n) for rank in range(size)]
    assert np.array_equal(np.concatenate(shares), np.arange(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_is_a_no_op() -> None:
    shard = sharding.current()
    assert shard == sharding.Shard(0, 1) and shard.is_chief
    rows = torch.arange(6.0).reshape(3, 2)
    assert sharding.gather_rows(rows, 3, shard) is rows
    assert sharding.all_true(False, shard) is False
    with pytest.raises(ValueError, match="rank 2 of 2"):
        sharding.Shard(2, 2)
    with pytest.raises(ValueError, match="holds 2 rows"):
        sharding.gather_rows(rows[:2], 3, shard)


GATHER_SCRIPT = """
import sys
import torch
import torch.distributed as dist
sys.path.insert(0, {repo!r})
from samespace import sharding
dist.init_process_group("gloo")
shard = sharding.current()
for n in (0, 1, 5, 6, 7, 100):
    start, stop = shard.bounds(n)
    local = torch.arange(start * 4, stop * 4, dtype=torch.float32).reshape(-1, 2, 2)
    table = sharding.gather_rows(local, n, shard)
    assert torch.equal(table, torch.arange(n * 4, dtype=torch.float32).reshape(-1, 2, 2)), (shard, n)
assert sharding.all_true(True, shard) and not sharding.all_true(shard.rank != 1, shard)
sharding.barrier(shard)
open(f"ok-{{shard.rank}}", "w").write(f"{{shard.rank}} {{shard.size}}")  # stdout is shared: lines would interleave
dist.destroy_process_group()  # exiting with gloo alive can abort a rank ("terminate called without ...")
"""


def test_gather_rows_across_three_processes(tmp_path: Path) -> None:
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT.format(repo=str(REPO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3", str(script)],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.read_text() for p in tmp_path.glob("ok-*")) == ["0 3", "1 3", "2 3"]
