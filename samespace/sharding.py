"""Split work over the processes of a distributed run and gather the results back, in rank order.

Used by feature extraction in training (each rank runs the backbone over its share of the images, then
every rank holds the whole table) and by any job that embeds a collection across slots.

    shard = sharding.current()                     # rank / size of torch.distributed, else (0, 1)
    mine = shard.indices(len(paths))               # this rank's contiguous share of 0..n-1
    table = sharding.gather_rows(local_rows, len(paths), shard)   # (n, ...) on every rank
    if shard.is_chief: write(table)                # one writer
    sharding.barrier(shard)                        # the others wait until it is written

Shares are contiguous blocks whose sizes differ by at most one, so gathering is a concatenation in rank
order and the result never depends on the number of processes. Collectives use ``torch.distributed``
(gloo on CPU, which Determined's torch_distributed launcher and torchrun both set up); with one process
every function is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's place in a run: ``rank`` of ``size`` processes (rank 0 is the chief)."""

    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"invalid shard: rank {self.rank} of {self.size}")

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """``[start, stop)`` of this rank's contiguous share of ``n`` items."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def indices(self, n: int) -> np.ndarray:
        """This rank's share of ``0 .. n-1`` (int64, ascending)."""
        start, stop = self.bounds(n)
        return np.arange(start, stop, dtype=np.int64)


def current() -> Shard:
    """The shard of this process: from an initialised ``torch.distributed`` process group, else ``Shard()``."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def _collective(shard: Shard) -> bool:
    if shard.size == 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"shard {shard.rank} of {shard.size} needs an initialised torch.distributed process group")
    return True


def gather_rows(local: torch.Tensor, n: int, shard: Shard) -> torch.Tensor:
    """Concatenate every rank's rows (rank order) into one ``(n, ...)`` CPU tensor, on every rank.

    ``local`` holds the rows of ``shard.bounds(n)``, the same trailing shape and dtype on every rank.
    Shares are padded to the largest one for the collective and the padding is dropped, so the result
    holds exactly ``n`` rows; it is written into one preallocated buffer (no second copy of the table).
    """
    start, stop = shard.bounds(n)
    if len(local) != stop - start:
        raise ValueError(f"rank {shard.rank} holds {len(local)} rows, its share of {n} is {stop - start}")
    if not _collective(shard):
        return local
    local = local.contiguous().cpu()
    largest = -(-n // shard.size)  # shares differ by at most one row
    if largest == 0:
        return local  # nothing to gather (the same on every rank: n is shared)
    buffer = torch.empty((shard.size * largest, *local.shape[1:]), dtype=local.dtype)
    padded = torch.zeros((largest, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    dist.all_gather(list(buffer.split(largest)), padded)
    # Close the gaps left by shorter shares, in place (rows only move towards the start).
    row = 0
    for r in range(shard.size):
        first, last = Shard(r, shard.size).bounds(n)
        if row != r * largest:
            buffer[row : row + last - first] = buffer[r * largest : r * largest + last - first].clone()
        row += last - first
    return buffer[:n]


def all_true(flag: bool, shard: Shard) -> bool:
    """Whether ``flag`` holds on every rank (so that all ranks take the same branch)."""
    if not _collective(shard):
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def barrier(shard: Shard) -> None:
    """Wait until every rank gets here (e.g. until the chief has written a file the others will read)."""
    if _collective(shard):
        dist.barrier()
