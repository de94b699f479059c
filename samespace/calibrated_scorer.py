"""The ``calibrated`` method's scorer: the probability of the same space from the pair alone
(samespace.calibrated_score), for the finder's exhaustive and candidate searches alike."""

from __future__ import annotations

import numpy as np
import torch

from samespace import background, calibrated_score, neighbours, verification
from samespace.scorers import CosineScorer, LocalFeaturesMixin

# Pairs whose score cannot reach this probability with the most spatial evidence are not verified when no
# threshold is set (evaluation of every pair of a split): their score is the evidence-free one, below 1 %.
VERIFY_BELOW = 0.01
# Pairs scoring at least this, yet under the threshold, are checked for being one photo (samespace.tiers): on the
# real training split that is 151 of 8,952 verified pairs, 35 of them duplicates (docs/quality.md, "Match tiers")
COPY_CHECK_FROM = 1e-3


class CalibratedScorer(LocalFeaturesMixin, CosineScorer):
    """GeM vectors and SIFT keypoints per photo (the ``verified`` method's embeddings, so the two share a store
    layout); per pair ``sigmoid(logit(cos, background, inliers))`` (:class:`calibrated_score.Coefficients`).

    The inliers of a pair are counted when its cosine is at least ``calibrated_score.VERIFY_COSINE`` and its
    evidence-free logit at least :attr:`verify_from` (set from the threshold by
    :func:`samespace.scorer_choice.choose_scorer`), whatever its rank among either photo's
    neighbours: a pair's score never depends on the other photos of the run. Matches are cached, so a pair is
    verified once per run; :meth:`match` gives them to the match tiers (samespace.tiers).
    """

    name = "calibrated"

    def __init__(self, extractor: torch.nn.Module, batch_size: int = 64, device: str = "cpu",
                 coefficients: calibrated_score.Coefficients | None = None,
                 reference: background.Background | None = None) -> None:
        super().__init__(extractor, batch_size, device)
        self.coefficients = coefficients or calibrated_score.load()
        self.reference = reference or background.load()
        self.keypoints = []
        self.verify_from = self.coefficients.verify_from(VERIFY_BELOW)
        self.background_similarity = np.zeros(0)
        self._matches: dict[int, verification.Match] = {}

    def finish(self) -> None:
        super().finish()
        self._matches = {}
        if len(self.vectors) and self.vectors.shape[1] != self.reference.vectors.shape[1]:
            raise ValueError(f"the calibrated method's background has {self.reference.vectors.shape[1]}-d vectors "
                             f"({self.reference.backbone}), this backbone gives {self.vectors.shape[1]}-d ones")
        self.background_similarity = background.similarity(self.vectors, self.reference.vectors)

    def match(self, i: int, j: int) -> verification.Match:
        """Spatial verification of photos ``i`` and ``j`` (cached, either order)."""
        low, high = min(i, j), max(i, j)
        code = low * len(self.vectors) + high
        if code not in self._matches:
            self._matches[code] = verification.match(self.keypoints[low], self.keypoints[high])
        return self._matches[code]

    def near_misses(self, threshold: float, low: float = COPY_CHECK_FROM) -> tuple[np.ndarray, np.ndarray]:
        """The verified pairs (left < right) scoring in ``[low, threshold)``: close enough that their pixels may
        show one photo. A pair left unverified scores under ``sigmoid(verify_from)``, far below the shipped
        ``low``, so in an exhaustive run the set depends on the pairs alone."""
        if not self._matches:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        codes = np.sort(np.fromiter(self._matches, np.int64, len(self._matches)))
        left, right = np.divmod(codes, len(self.vectors))
        p = self.score(left, right)
        keep = (p >= low) & (p < threshold)
        return left[keep], right[keep]

    def _probabilities(self, left: np.ndarray, right: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        b = self.background_similarity
        plain = self.coefficients.logit(cosine, 0.5 * (b[left] + b[right]), 0)
        verify = (plain >= self.verify_from) & (cosine >= calibrated_score.VERIFY_COSINE) & (left != right)
        low, high = np.minimum(left[verify], right[verify]), np.maximum(left[verify], right[verify])
        codes = (low * len(self.vectors) + high).tolist()
        todo = sorted({code for code in codes if code not in self._matches})
        if todo:
            new_low, new_high = np.divmod(np.array(todo, np.int64), len(self.vectors))
            self._matches.update(zip(todo, verification.match_pairs(self.keypoints, new_low, new_high), strict=True))
        inliers = np.zeros(len(left), np.int64)
        inliers[verify] = [self._matches[code].inliers for code in codes]
        return calibrated_score.sigmoid(plain + self.coefficients.inliers * calibrated_score.evidence(inliers))

    def score(self, left: np.ndarray, right: np.ndarray, batch_size: int = 1 << 15) -> np.ndarray:
        left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
        out = np.empty(len(left), dtype=np.float64)
        for start in range(0, len(left), batch_size):
            end = start + batch_size
            cosine = neighbours.pair_inner_products(self.vectors, left[start:end], right[start:end]).clip(-1.0, 1.0)
            out[start:end] = self._probabilities(left[start:end], right[start:end], cosine)
        return out

    def score_rows(self, start: int, stop: int) -> np.ndarray:
        cosine = (self.vectors[start:stop] @ self.vectors.T).astype(np.float64).clip(-1.0, 1.0)
        rows, cols = np.indices(cosine.shape)
        return self._probabilities((rows + start).ravel(), cols.ravel(), cosine.ravel()).reshape(cosine.shape)
