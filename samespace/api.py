"""The Python API: find the duplicate photos in folders with one call.

>>> import samespace
>>> found = samespace.find_duplicates(["photos/"])                      # doctest: +SKIP
>>> for group in found.groups:                                          # doctest: +SKIP
...     print(group)                                                    # the largest groups first
['photos/kitchen_1.jpg', 'photos/kitchen_1_crop.jpg']

Bad arguments are refused with the command line's own checks (samespace.commands.find, samespace.outputs), before
any photo is read: one :class:`samespace.errors.FindDuplicatesError` naming the value or the file.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samespace import (
    embedding_store,
    errors,
    finder,
    outputs,
    photo_files,
    scorer_choice,
    scoring_methods,
    store_format,
    store_identity,
    tiers,
)
from samespace.commands import find

# What ``device`` may be: the choices of the command lines' --device.
DEVICES = ("auto", "cpu", "cuda")
Folders = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


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
    folders: Folders,
    method: str | None = None,
    threshold: float | None = None,
    checkpoint: str | Path | None = None,
    against: Folders | None = None,
    store: str | Path | None = None,
    device: str = "auto",
    batch_size: int = scoring_methods.DEFAULT_BATCH_SIZE,
    progress: bool = False,
    precision: str = "fp32",
    include_hidden: bool = False,
    overwrite: bool = False,
) -> Duplicates:
    """Find the photos of the same space (re-shot, cropped, edited) under ``folders`` (searched recursively).

    Args:
        folders: a folder of photos, or several; photos are only ever read.
        method: ``calibrated`` (the default without a checkpoint), ``relative``, ``verified``, ``cosine``, ``whash`` or
            ``phash`` (samespace.scoring_methods.REFERENCE_METHODS).
        threshold: a pair is a duplicate when its score is at least this, a number in the method's score range
            ([0, 1] but for cosine, relative and verified: samespace.scoring_methods.SCORE_RANGES); default: the
            method's calibrated one.
        checkpoint: a checkpoint folder of the trained Siamese model (model_def.py); replaces ``method``.
        against: a library folder, or several: report only duplicates between the photos of ``folders`` and these.
        store: an embedding-store file: photos it holds are not embedded again, new ones are added to it. An
            existing file SameSpace did not write, of another kind, or a store of another method, is refused unless
            ``overwrite``.
        device: ``auto``, ``cpu`` or ``cuda`` (:data:`DEVICES`); ``cuda`` without a GPU is an error.
        batch_size: photos embedded at a time, at least 1.
        progress: show progress bars on stderr.
        precision: the backbone's arithmetic: ``fp32``, ``bf16`` or ``fp16`` (samespace.scoring_methods.PRECISIONS).
        include_hidden: also scan hidden files and folders and thumbnail folders (``.thumbnails``, ``@eaDir``),
            which are left out by default (samespace.labelling.is_hidden).
        overwrite: let ``store`` replace a file SameSpace did not write or another method's store (the command
            line's --overwrite); a photo is never replaced.

    Returns:
        The groups, the pairs with their scores and the skipped files (:class:`Duplicates`).

    Raises:
        samespace.errors.FindDuplicatesError: a bad argument, a folder missing, no photos found, an unusable
            checkpoint or store file (the original error is its ``__cause__``).

    Example:
        >>> found = find_duplicates(["listing/"], method="phash")            # doctest: +SKIP
        >>> found.pairs[0]                                                    # doctest: +SKIP
        ('listing/room_1.jpg', 'listing/room_1_edited.jpg', 1.0, 'same photo')
    """
    folders, against = _folder_list(folders), _folder_list(against or [])
    threshold = _check_arguments(method, threshold, checkpoint, device, batch_size, precision)
    for folder in [*folders, *against]:
        if not Path(folder).is_dir():
            raise errors.FindDuplicatesError(f"{folder}: not a directory")
    if store is not None:
        try:
            outputs.check_outputs([outputs.Target("store", Path(store), kind=outputs.STORE)],
                                  inputs=[*folders, *against], overwrite=overwrite,
                                  image_extensions=photo_files.readable_extensions())
        except outputs.OutputError as exc:
            raise _api_error(exc) from exc
    try:
        scorer, threshold, _ = scorer_choice.choose_scorer(
            method=method, checkpoint=checkpoint, batch_size=batch_size, device=scorer_choice.device_for(device),
            threshold=threshold, precision=precision)
    except (errors.FindDuplicatesError, ValueError, OSError) as exc:  # e.g. a damaged checkpoint or threshold file
        raise _api_error(exc) from exc
    opened = None
    if store is not None:
        fingerprint = store_identity.scorer_fingerprint(scorer)
        try:
            store_format.check_replaceable(store, scorer.name, overwrite)
            opened = embedding_store.open_store(store, fingerprint, scorer.name, scorer.fields)
        except store_format.StoreError as exc:
            raise _api_error(exc) from exc
        opened.save_to = Path(store)
    with find.kept_on_interrupt(opened, Path(store) if store is not None else None):
        if against:
            result = finder.find_against(folders, against, scorer, threshold, batch_size=batch_size,
                                         progress=progress, store=opened, include_hidden=include_hidden)
        else:
            result = finder.find_duplicates(folders, scorer, threshold, batch_size=batch_size, progress=progress,
                                            store=opened, include_hidden=include_hidden)
    if opened is not None:
        opened.save(store)
    return Duplicates.from_result(result)


def _folder_list(folders: Folders) -> list[str | os.PathLike[str]]:
    """One folder (a str or path) or several, as a list: a str is a folder's name, not its letters."""
    if isinstance(folders, (str, os.PathLike)):
        return [folders]
    return list(folders)


def _check_arguments(method: str | None, threshold: object, checkpoint: str | Path | None, device: object,
                     batch_size: object, precision: object) -> float | None:
    """Refuse what the command line's parser refuses (its choices, --batch-size, check_threshold), before any work;
    the threshold as a float."""
    if method is not None and method not in scoring_methods.REFERENCE_METHODS:
        raise errors.FindDuplicatesError(
            f"method {method!r}: expected one of {', '.join(scoring_methods.REFERENCE_METHODS)}")
    if device not in DEVICES:
        raise errors.FindDuplicatesError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    if precision not in scoring_methods.PRECISIONS:
        raise errors.FindDuplicatesError(
            f"precision {precision!r}: expected one of {', '.join(scoring_methods.PRECISIONS)}")
    # bool is an int to Python, and a batch of True photos is a mistake, not 1
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise errors.FindDuplicatesError(f"batch_size {batch_size!r}: expected a whole number >= 1")
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise errors.FindDuplicatesError(f"threshold {threshold!r}: expected a number")
    try:
        find.check_threshold(float(threshold), "model" if checkpoint else method or scorer_choice.default_method())
    except errors.FindDuplicatesError as exc:
        raise _api_error(exc) from exc
    return float(threshold)


def _api_error(exc: Exception) -> errors.FindDuplicatesError:
    """A command-line check's one-line error, its options spelt as find_duplicates' keywords (``--threshold 5``
    -> ``threshold 5``, ``pass --overwrite`` -> ``pass overwrite=True``); the message still names the file."""
    text = re.sub(r"^--(threshold|device|precision)\b", r"\1", str(exc))
    text = re.sub(r"with --method (\w+)", r"with method='\1'", text).replace("another --store", "another store")
    return errors.FindDuplicatesError(text.replace("pass --overwrite", "pass overwrite=True"))
