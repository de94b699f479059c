"""What a run may hold in memory: runs whose keypoints cannot be held are refused up front, and a store's new rows
are saved early and mapped back instead of piling up (samespace.keypoint_table, samespace.embedding_store)."""

from __future__ import annotations

import sys

from samespace import errors, keypoint_table, machine, outputs, scorers
from samespace.embedding_store import EmbeddingStore

EARLY_SAVE_SHARE = 1 / 8  # of the machine's memory: new store rows held before they are saved and mapped back
FALLBACK_MEMORY = 8 << 30  # when the machine does not say its memory


def check_memory(n_photos: int, scorer: scorers.PairScorer, new_store_rows: int = 0) -> None:
    """Refuse, before any photo is decoded, a run whose keypoints (``--method verified`` or ``calibrated``) cannot be
    held (keypoint_table.room_problem): it would fail hours later. ``n_photos``: photos the scorer will hold;
    ``new_store_rows``: rows an embedding store will hold until it is saved."""
    if isinstance(scorer, scorers.LocalFeaturesMixin):
        problem = keypoint_table.room_problem(f"--method {scorer.name}", n_photos, new_store_rows)
        if problem:
            raise errors.FindDuplicatesError(problem)


def save_early(store: EmbeddingStore) -> None:
    """Save the store to :attr:`EmbeddingStore.save_to` and map its rows back (EmbeddingStore.reload) once the rows
    held in memory take :data:`EARLY_SAVE_SHARE` of the machine's memory, so that a first run over a very large
    collection holds a bounded share of its keypoints (and a killed run keeps what it embedded). A store that
    cannot be written is one warning; the run goes on without saving early."""
    total = machine.physical_memory() or FALLBACK_MEMORY
    if store.save_to is None or store.rows_in_memory() * store.row_bytes() < total * EARLY_SAVE_SHARE:
        return
    try:
        store.save(store.save_to)
    except (OSError, outputs.OutputError) as exc:
        print(f"warning: {store.save_to}: cannot save the embedding store early ({exc}); its new rows stay in memory",
              file=sys.stderr)
        store.save_to = None
        return
    store.reload(store.save_to)
