"""The Python API: find the duplicate photos in folders with one call.

>>> import samespace
>>> found = samespace.find_duplicates(["photos/"])                      # doctest: +SKIP
>>> for group in found.groups:                                          # doctest: +SKIP
...     print(group)                                                    # best-scoring pairs first
['photos/kitchen_1.jpg', 'photos/kitchen_1_crop.jpg']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samespace import embedding_store, errors, finder, scorer_choice, scoring_methods, store_identity, tiers


@dataclass(frozen=True)
class Duplicates:
    """What a search found.

    ``groups``: the duplicate groups, largest first, each a list of photo paths; ``pairs``: every duplicate pair
    as ``(path, path, score, tier)``, highest score first (tier: ``identical``, ``same photo`` or ``same space``,
    samespace.tiers); ``skipped``: ``{"path", "reason"}`` of each file that could
    not be read; ``blank``: photos with almost no detail (not scored; grouped only when byte-identical);
    ``method`` and ``threshold``: what decided; ``summary``: counts and timings.
    """

    groups: list[list[str]]
    pairs: list[tuple[str, str, float, str]]
    skipped: list[dict[str, str]]
    blank: list[str]
    method: str
    threshold: float
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: finder.Result) -> Duplicates:
        """The plain form of a finder run (finder.Result holds indices into its path list)."""
        document = result.to_dict()
        return cls(
            groups=[list(g["members"]) for g in document["groups"]],
            pairs=[tiers.pair_parts(pair) for pair in document["pairs"]],
            skipped=list(document["skipped"]),
            blank=list(document["blank"]),
            method=str(result.summary.get("method")),
            threshold=float(result.summary.get("threshold", float("nan"))),
            summary=document["summary"],
        )


def find_duplicates(
    folders: Sequence[str | Path],
    method: str | None = None,
    threshold: float | None = None,
    checkpoint: str | Path | None = None,
    against: Sequence[str | Path] | None = None,
    store: str | Path | None = None,
    device: str = "auto",
    batch_size: int = scoring_methods.DEFAULT_BATCH_SIZE,
    progress: bool = False,
    precision: str = "fp32",
    include_hidden: bool = False,
) -> Duplicates:
    """Find the photos of the same space (re-shot, cropped, edited) under ``folders`` (searched recursively).

    Args:
        folders: folders of photos; photos are only ever read.
        method: ``calibrated`` (the default without a checkpoint), ``relative``, ``verified``, ``cosine``, ``whash`` or
            ``phash`` (see samespace.scoring_methods).
        threshold: a pair is a duplicate when its score is at least this; default: the method's calibrated one.
        checkpoint: a checkpoint folder of the trained Siamese model (model_def.py); replaces ``method``.
        against: library folders: report only duplicates between the photos of ``folders`` and these.
        store: an embedding-store file: photos it holds are not embedded again, new ones are added to it.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: photos embedded at a time.
        progress: show progress bars on stderr.
        precision: the backbone's arithmetic: ``fp32``, ``bf16`` or ``fp16`` (samespace.backbones.PRECISIONS).
        include_hidden: also scan hidden files and folders and thumbnail folders (``.thumbnails``, ``@eaDir``),
            which are left out by default (samespace.labelling.is_hidden).

    Returns:
        The groups, the pairs with their scores and the skipped files (:class:`Duplicates`).

    Raises:
        samespace.errors.FindDuplicatesError: no photos found, a folder missing, an unusable checkpoint.

    Example:
        >>> found = find_duplicates(["listing/"], method="phash")            # doctest: +SKIP
        >>> found.pairs[0]                                                    # doctest: +SKIP
        ('listing/room_1.jpg', 'listing/room_1_edited.jpg', 1.0, 'same photo')
    """
    if isinstance(folders, (str, Path)):
        folders = [folders]
    for folder in [*folders, *(against or [])]:
        if not Path(folder).is_dir():
            raise errors.FindDuplicatesError(f"{folder}: not a directory")
    scorer, threshold, _ = scorer_choice.choose_scorer(
        method=method, checkpoint=checkpoint, batch_size=batch_size, device=scorer_choice.device_for(device),
        threshold=threshold, precision=precision)
    opened = None
    if store is not None:
        fingerprint = store_identity.scorer_fingerprint(scorer)
        opened = embedding_store.open_store(store, fingerprint, scorer.name, scorer.fields)
        opened.save_to = Path(store)
    if against:
        result = finder.find_against(folders, against, scorer, threshold, batch_size=batch_size, progress=progress,
                                     store=opened, include_hidden=include_hidden)
    else:
        result = finder.find_duplicates(folders, scorer, threshold, batch_size=batch_size, progress=progress,
                                        store=opened, include_hidden=include_hidden)
    if opened is not None:
        opened.save(store)
    return Duplicates.from_result(result)
