"""Several reference methods' scorers on one collection of decoded photos, each backbone run once: how
``samespace evaluate`` and ``samespace calibrate`` score a split (the finder runs one method at a time)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from samespace import scorers


def reference_scorers(
    methods: Sequence[str],
    images: np.ndarray,
    aspects: np.ndarray | None = None,
    device: str = "cpu",
    progress: bool = False,
    batch_size: int = 256,
) -> dict[str, scorers.PairScorer]:
    """Finished scorers (:func:`samespace.scorers.reference_scorer`) of several methods on one collection of
    decoded images, each backbone run once: relative, verified and calibrated (one GeM Lite0 backbone) share its
    vectors, and verified and calibrated the keypoints. The scores are those of each scorer fed on its own.
    ``progress``: a bar over the photos, embedded ``batch_size`` at a time.

    >>> images = np.zeros((2, 256, 256, 3), np.uint8)
    >>> sorted(reference_scorers(["whash", "relative"], images))
    ['relative', 'whash']
    """
    built = {method: scorers.reference_scorer(method, device=device) for method in methods}
    aspects = np.ones(len(images)) if aspects is None else np.asarray(aspects, np.float64)
    ordered = sorted(built.values(), key=lambda s: -len(s.fields))  # the most fields first: theirs serve the others
    provider = providers(ordered)
    with tqdm(total=len(images), desc=f"embed for {', '.join(built)}", unit="photo", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            batch, batch_aspects = images[start : start + batch_size], aspects[start : start + batch_size]
            made: dict[int, dict[str, np.ndarray]] = {}
            for k, scorer in enumerate(ordered):
                source = provider[k]
                if source is None:
                    scorer.add(batch, batch_aspects)
                elif source == k:
                    made[k] = scorer.embed(batch, batch_aspects)
                    scorer.add_embeddings(made[k])
                else:
                    scorer.add_embeddings({name: made[source][name] for name in scorer.fields})
            bar.update(len(batch))
    for scorer in ordered:
        scorer.finish()
    return built


def providers(ordered: Sequence[scorers.PairScorer]) -> list[int | None]:
    """For each scorer, the index of the scorer whose embeddings it takes: the first with the same backbone (its
    fingerprint) whose fields hold its own, itself when none comes before it; None for a scorer without a backbone.
    """
    identity = [s.backbone().fingerprint() if isinstance(s, scorers.CosineScorer)
                and hasattr(s.backbone(), "fingerprint") else None for s in ordered]
    out: list[int | None] = []
    for k, scorer in enumerate(ordered):
        if identity[k] is None:
            out.append(None)
            continue
        out.append(next(j for j in range(k + 1) if j == k or (identity[j] == identity[k] and out[j] == j
                                                               and set(scorer.fields) <= set(ordered[j].fields))))
    return out
