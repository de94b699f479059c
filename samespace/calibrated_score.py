"""The calibrated score: the probability that two photos show the same space, from evidence of the pair alone.

    logit = intercept + w_cosine * cos(i, j) + w_background * (b_i + b_j) / 2 + w_inliers * evidence(inliers)
    score = sigmoid(logit)

- ``cos``: the cosine of the two photos' GeM-pooled EfficientNet-Lite0 unit vectors.
- ``b``: each photo's similarity to the fixed background (samespace.background): the hubness correction of
  ``relative``, measured against photos that are the same in every run instead of the run's other photos.
- ``evidence``: ``sqrt(clip(inliers, FLOOR, CAP) - FLOOR)`` of spatial verification (samespace.verification, one
  match per keypoint), counted for every pair with a cosine of at least :data:`VERIFY_COSINE` that it could lift
  over the threshold (:func:`verify_from`), not only for neighbours; 0 for the others.

Nothing depends on what else is in the folder, so a threshold means the same in every folder, and adding or
removing unrelated photos moves no pair's score. The four weights are a logistic regression (scikit-learn) on every
unique pair of the development sets' training splits (each split weighing the same), so the score reads as a
probability; they ship in ``samespace/data/calibrated.json`` with the background, both written by
``samespace calibrate --fit-calibrated`` (samespace.calibrated_fit).

>>> model = Coefficients(intercept=-19.84, cosine=32.40, background=-16.52, inliers=2.82)  # the shipped weights
>>> float(model.probability(0.9, 0.6, 0).round(3)), float(model.probability(0.7, 0.6, 60).round(3))
(0.356, 1.0)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from samespace import verification

COEFFICIENTS_FILE = Path(__file__).with_name("data") / "calibrated.json"
# Pairs less alike than this are not verified (their evidence is 0, in the fit as in the finder): on the real training
# split 5 of 634 duplicates lie below it and 8,952 of 228,150 pairs above. Without it the shipped weights verify pairs
# down to a cosine of 0.22, and scoring that split's 676-photo folder took 114 s instead of 10 s
VERIFY_COSINE = 0.5


def evidence(inliers: np.ndarray | int) -> np.ndarray:
    """Spatial evidence of pairs: ``sqrt(clip(inliers, FLOOR, CAP) - FLOOR)`` (0 up to chance level, at most
    ``sqrt(CAP - FLOOR)``)."""
    counts = np.clip(np.asarray(inliers, np.float64), verification.FLOOR, verification.CAP)
    return np.sqrt(counts - verification.FLOOR)


MAX_EVIDENCE = float(evidence(verification.CAP))


@dataclass(frozen=True)
class Coefficients:
    """The logistic model of the calibrated score."""

    intercept: float
    cosine: float
    background: float
    inliers: float

    def logit(self, cosine: np.ndarray | float, background: np.ndarray | float,
              inliers: np.ndarray | int) -> np.ndarray:
        """The log-odds of pairs: ``background`` is the mean of the two photos' background similarities."""
        return (self.intercept + self.cosine * np.asarray(cosine, np.float64)
                + self.background * np.asarray(background, np.float64) + self.inliers * evidence(inliers))

    def probability(self, cosine: np.ndarray | float, background: np.ndarray | float,
                    inliers: np.ndarray | int) -> np.ndarray:
        """The calibrated score of pairs: the probability of the same space."""
        return sigmoid(self.logit(cosine, background, inliers))

    def verify_from(self, threshold: float) -> float:
        """The smallest logit without spatial evidence that the most evidence can lift to ``threshold`` (a
        probability): pairs below it are not verified, since no inlier count changes their side of the threshold."""
        return logit(threshold) - max(self.inliers, 0.0) * MAX_EVIDENCE


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow warnings, float64."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


def logit(p: float) -> float:
    """The log-odds of a probability (``-inf`` / ``inf`` at 0 / 1)."""
    if p <= 0.0:
        return -np.inf
    if p >= 1.0:
        return np.inf
    return float(np.log(p / (1.0 - p)))


@lru_cache(maxsize=1)
def load(path: str | Path = COEFFICIENTS_FILE) -> Coefficients:
    """The shipped coefficients (cached). Raises FileNotFoundError / ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the calibrated method's coefficients are missing (reinstall samespace, "
                                "or `samespace calibrate --fit-calibrated` in a source checkout)")
    try:
        table = json.loads(path.read_text())["coefficients"]
        values = {name: float(table[name]) for name in ("intercept", "cosine", "background", "inliers")}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a calibrated-score file ({type(exc).__name__}: {exc})") from exc
    if not all(np.isfinite(v) for v in values.values()):
        raise ValueError(f"{path}: a coefficient is not finite")
    return Coefficients(**values)


def save(path: str | Path, coefficients: Coefficients, provenance: dict[str, object]) -> None:
    """Write the coefficients with how they were fitted (JSON)."""
    from samespace import outputs

    document = {"coefficients": asdict(coefficients), **provenance}
    outputs.atomic_write(Path(path), json.dumps(document, indent=2) + "\n")
    load.cache_clear()
