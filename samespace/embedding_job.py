"""Embed a photo collection into an embedding store, across the processes of a distributed run.

    python embed.py PHOTOS_DIR [...] --store STORE.npz [--method relative|verified|... | --checkpoint DIR]
    torchrun --nproc_per_node 2 embed.py PHOTOS_DIR --store STORE.npz          # locally, CPU (gloo)
    det experiment create embed.yaml .                                          # on a cluster (embed.yaml)

Every process walks the same folders (same sorted list), takes its contiguous share (sharding.Shard), and
embeds the photos of its share that ``--store`` does not already hold, with the scorer find_duplicates.py
would use for the same options. Each rank writes its new rows to ``<output>.part-<rank>-of-<size>``; after a
barrier the chief merges the parts into ``--store`` (atomically) and deletes them. Rows are stored sorted by
content key, so the merged store does not depend on the number of processes. Progress goes to the
Determined master (``core_context.train.report_progress``) on a cluster, to the log locally. A paused or
preempted job (``core_context.preempt``, each rank asking the master) saves each rank's rows into the store and
exits, ranks that had already finished their share included; when it resumes, it embeds only the rest. The last
line on stdout is the store's path. Then:

    python find_duplicates.py --embeddings STORE.npz [--method ... | --checkpoint DIR] [--json groups.json]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from samespace import (
    batch_decoding,
    embedding_store,
    errors,
    photo_files,
    scorer_choice,
    scorers,
    sharding,
    store_format,
    store_identity,
)
from samespace import finder as fd
from samespace.commands import embed, find
from samespace.embedding_store import EmbeddingStore

log = logging.getLogger("samespace.embed")
CHUNK_BATCHES = 8  # batches embedded between two progress reports


def start_process_group() -> bool:
    """The process group of torchrun / determined.launch.torch_distributed (gloo on CPU); False with one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


@dataclass
class Reports:
    """Where a run reports its progress (a fraction) and its final counts, and whether it must stop now (the job
    paused or preempted): the Determined master on a cluster."""

    progress: Callable[[float], None]
    metrics: Callable[[int, dict[str, int]], None]
    should_stop: Callable[[], bool] = lambda: False


@contextlib.contextmanager
def reports(distributed: bool) -> Iterator[Reports]:
    """Determined's core context when Determined is installed (``pip install 'samespace[train]'``; on a cluster it
    reports to the master), else the log only: embedding needs nothing of Determined."""
    try:
        from determined import core
    except ImportError:
        yield Reports(lambda fraction: None, lambda steps, metrics: log.info("metrics: %s", metrics))
        return
    context = core.DistributedContext.from_torch_distributed() if distributed else None
    # Each rank asks the master itself: ranks report after their own chunks, not in step (WorkersAskChief would
    # need every rank to ask at the same point).
    with core.init(distributed=context, preempt_mode=core.PreemptMode.WorkersAskMaster) as core_context:
        yield Reports(core_context.train.report_progress,
                      lambda steps, metrics: core_context.train.report_validation_metrics(
                          steps_completed=steps, metrics=metrics),
                      core_context.preempt.should_preempt)


def part_path(output: Path, shard: sharding.Shard) -> Path:
    """Where a rank writes its new rows before the chief merges them."""
    return output.with_name(f"{output.name}.part-{shard.rank}-of-{shard.size}")


def embed_share(
    paths: Sequence[Path],
    scorer: scorers.PairScorer,
    known: EmbeddingStore,
    batch_size: int,
    report: Callable[[int, int], bool],
    decode_workers: int | None = None,
    decode_pool: str = batch_decoding.DEFAULT_POOL,
) -> tuple[EmbeddingStore, int, list[dict[str, str]]]:
    """Embed the photos of ``paths`` that ``known`` lacks. Returns (a store of this share's new rows and stat
    entries, photos embedded, skipped files). ``report(done, total)`` is called after every chunk; when it returns
    False the share stops there (what is embedded so far is returned)."""
    part = EmbeddingStore(known.fingerprint, known.method, scorer.fields)
    skipped: list[dict[str, str]] = []
    embedded = 0
    chunk = CHUNK_BATCHES * batch_size
    for start in range(0, len(paths), chunk):
        chunk_paths = paths[start : start + chunk]
        result = fd.embed_photos(chunk_paths, scorer, known, batch_size, progress=False, fill_scorer=False,
                                 decode_workers=decode_workers, decode_pool=decode_pool)
        embedded += result.embedded
        skipped.extend(result.skipped)
        for path in chunk_paths:
            entry = known.stat_entry(path)
            if entry is not None and entry[2] in known:
                part.record(path, *entry)
        if not report(start + len(chunk_paths), len(paths)):
            break
    new_keys = sorted({entry.key for entry in part.stat_entries().values()})
    if new_keys:
        part.add(new_keys, known.get(new_keys))
    return part, embedded, skipped


def run(args: argparse.Namespace, reporter: Reports, shard: sharding.Shard) -> Path:
    """Embed this rank's share, then (chief) merge every share into ``args.output``."""
    output = Path(args.output)
    scorer, _, _ = find.build_scorer(args, scorer_choice.device_for(args.device))
    fingerprint = store_identity.scorer_fingerprint(scorer)
    paths = photo_files.image_files(args.folders)
    start, stop = shard.bounds(len(paths))
    store_format.check_replaceable(output, scorer.name, args.overwrite)
    known = embedding_store.open_store(output, fingerprint, scorer.name, scorer.fields)
    before = len(known)  # this rank embeds into known itself: what it adds counts from here
    t0 = time.perf_counter()

    stopped = False

    def report(done: int, total: int) -> bool:
        nonlocal stopped
        log.info("rank %d: %d / %d photos (%.0f s)", shard.rank, done, total, time.perf_counter() - t0)
        if shard.is_chief:  # shares differ by at most one photo: the chief's progress is the job's
            reporter.progress(done / max(total, 1))
        stopped = done < total and reporter.should_stop()
        return not stopped

    with find.kept_on_interrupt(known, output):  # each rank's rows (concurrent saves keep every row)
        part, embedded, skipped = embed_share(paths[start:stop], scorer, known, args.batch_size, report,
                                              args.workers, args.decode_pool)
    # Every rank asks here whether all finished their share: a rank that finished just before the others were
    # stopped would otherwise wait for them at the merge's barrier, its rows only in its part file
    if not sharding.all_true(not stopped, shard):  # no merge: each rank saves its rows (concurrent saves keep all)
        added = len(known) - before  # counted before the save, which also reads in the rows other ranks saved
        output.parent.mkdir(parents=True, exist_ok=True)
        known.save(output)
        why = "stopped by the master" if stopped else "finished its share, another rank was stopped by the master"
        log.info("rank %d: %s; %d embeddings saved in %s, a resumed job goes on from them", shard.rank, why, added,
                 output)
        return output
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    log.info("rank %d: embedded %d of its %d photos, %d skipped", shard.rank, embedded, stop - start, len(skipped))
    output.parent.mkdir(parents=True, exist_ok=True)
    part.save(part_path(output, shard))
    sharding.barrier(shard)
    if shard.is_chief:
        parts = [part_path(output, sharding.Shard(r, shard.size)) for r in range(shard.size)]
        try:
            merged = embedding_store.merge_files(parts, fingerprint, scorer.name, scorer.fields)
            known.merge(merged)
            try:
                known.save(output)
            except OSError as exc:  # e.g. a read-only or immutable store: one line, not the temporary file's name
                raise errors.FindDuplicatesError(
                    f"{output}: cannot write the embedding store ({exc.strerror or exc})") from exc
        finally:  # the parts only carry rows to the chief: never left beside the store
            for p in parts:
                embedding_store.remove_store(p)
        listed, added = len(known.listed_paths()), len(known) - before
        log.info("%s: %d photos, %d distinct contents, %d new", output, listed, len(known), added)
        reporter.metrics(len(paths), {"photos": listed, "photos_embedded": added})
    sharding.barrier(shard)
    return output



if __name__ == "__main__":
    sys.exit(embed.main())
