"""Pair scorers: embed every image once (a hash code or a pooled feature vector), then score pairs from the
embeddings; nothing runs a backbone per pair. The trained model's scorer: samespace.model_scorer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from samespace import hashing, local_scaling, neighbours, scoring_methods, verification
from samespace.keypoint_table import KeypointTable
from samespace.store_format import FieldSpec


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
    from samespace.feature_cache import extract_features  # imported here: the hash methods need no model code

    feats = extract_features(extractor, images, variants=(0,), batch_size=batch_size, device=device, progress=False)
    return feats[:, 0].float().cpu()

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

    def backbone(self) -> torch.nn.Module | None:
        """The frozen feature extractor this scorer runs (None: it runs none, as the hashes)."""
        return None

    def add(self, images: np.ndarray, aspects: np.ndarray | None = None) -> None:
        """Embed a batch of uint8 images (B, 256, 256, 3) with their photos' aspect ratios (decoding.decode_image;
        default square); the images are not kept."""
        if len(images):
            self._parts.append(self._embed(images, _aspects(images, aspects)))
            self._n += len(images)

    # Per-image embeddings as named arrays (what embedding_store.py saves): field name -> its dtype, row shape and
    # value checks, so that a store whose rows this scorer could not have made is refused.
    fields: dict[str, FieldSpec] = {}

    # Work on each decoded photo beside the backbone: a module-level function of (image, aspect ratio) that the decode
    # pool runs in its workers (batch_decoding.decoded_batches' ``then``), its results handed to embed() as
    # ``prepared``. None: the scorer needs none.
    photo_work: Callable[[np.ndarray, float], Any] | None = None

    def embed(self, images: np.ndarray, aspects: np.ndarray | None = None,
              prepared: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        """The per-image embeddings of a batch as named arrays (one row per image), without keeping them.
        ``prepared``: :attr:`photo_work` of each image, done already (by the decode pool)."""
        if prepared is not None:
            raise ValueError(f"the {self.name} scorer has no per-photo work to be given")
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
        if kind not in hashing.HASH_FUNCTIONS:
            raise ValueError(f"hash kind must be one of {tuple(hashing.HASH_FUNCTIONS)}, got {kind!r}")
        self.name = kind
        self.codes = np.zeros(0, np.uint64)

    fields = {"codes": FieldSpec("uint64", ())}

    def _embed(self, images: np.ndarray, aspects: np.ndarray) -> np.ndarray:
        return hashing.HASH_FUNCTIONS[self.name](images)

    def _as_fields(self, part: np.ndarray) -> dict[str, np.ndarray]:
        return {"codes": part}

    def _from_fields(self, fields: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(fields["codes"], np.uint64)

    def finish(self) -> None:
        self.codes = np.concatenate(self._parts) if self._parts else np.zeros(0, np.uint64)
        self._parts = []

    def score(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return hashing.hash_similarity(self.codes[left], self.codes[right])

    def score_rows(self, start: int, stop: int) -> np.ndarray:
        return hashing.hash_similarity(self.codes[start:stop, None], self.codes[None, :])

    def search_vectors(self) -> np.ndarray:
        return self.codes.astype(">u8").view(np.uint8).reshape(-1, scoring_methods.HASH_BITS // 8)


class CosineScorer(PairScorer):
    """Cosine similarity of a frozen backbone's L2-normalised pooled features."""

    name = "cosine"

    def __init__(self, extractor: torch.nn.Module, batch_size: int = 64, device: str = "cpu") -> None:
        super().__init__()
        self.extractor = extractor.eval()
        self.batch_size = batch_size
        self.device = device
        self.vectors = np.zeros((0, 0), np.float32)

    def backbone(self) -> torch.nn.Module:
        return self.extractor

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


class LocalFeaturesMixin:
    """Adds each photo's SIFT keypoints (``verification.local_features`` of the same decoded image, back in its
    photo's shape) to a backbone scorer's vectors: the ``verified`` and ``calibrated`` methods' embeddings."""

    keypoints: Sequence[verification.LocalFeatures]
    _adding: KeypointTable | None = None

    @property
    def fields(self) -> dict[str, FieldSpec]:
        k = verification.MAX_KEYPOINTS
        return {"vectors": unit_vectors(self.extractor), "keypoint_count": FieldSpec("int32", (), bounds=(0, k)),
                "keypoint_xy": FieldSpec("float32", (k, 2)), "keypoint_descriptors": FieldSpec("uint8", (k, 128))}

    photo_work = staticmethod(verification.local_features)

    def _embed(
        self, images: np.ndarray, aspects: np.ndarray
    ) -> tuple[np.ndarray, list[verification.LocalFeatures]]:
        local = [verification.local_features(image, aspect) for image, aspect in zip(images, aspects, strict=True)]
        return super()._embed(images, aspects), local  # type: ignore[misc]

    def embed(self, images: np.ndarray, aspects: np.ndarray | None = None,
              prepared: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        if prepared is None:
            return super().embed(images, aspects)  # type: ignore[misc]
        if len(prepared) != len(images):
            raise ValueError(f"{len(images)} images but keypoints of {len(prepared)}")
        vectors = super()._embed(images, _aspects(images, aspects))  # type: ignore[misc]
        return self._as_fields((vectors, list(prepared)))

    def _as_fields(self, part: tuple[np.ndarray, list[verification.LocalFeatures]]) -> dict[str, np.ndarray]:
        return {"vectors": part[0], **verification.pack(part[1])}

    def _table(self) -> KeypointTable:
        """The keypoints added since the last :meth:`finish`: packed as they come, so a run of many photos does not
        hold them unpacked (and past a budget, not in memory: samespace.keypoint_table)."""
        if self._adding is None:
            self._adding = KeypointTable()
        return self._adding

    def add(self, images: np.ndarray, aspects: np.ndarray | None = None) -> None:
        if len(images):
            vectors, local = self._embed(images, _aspects(images, aspects))
            self._table().extend(local)
            self._parts.append(vectors)  # type: ignore[has-type]
            self._n += len(images)  # type: ignore[has-type]

    def add_embeddings(self, fields: dict[str, np.ndarray]) -> None:
        n = len(fields["vectors"])
        if n:
            self._table().append(fields)
            self._parts.append(np.asarray(fields["vectors"]))  # type: ignore[has-type]
            self._n += n  # type: ignore[has-type]

    def finish(self) -> None:
        if self._adding is not None:
            self.keypoints, self._adding = self._adding, None
        super().finish()  # type: ignore[misc]


class VerifiedScorer(LocalFeaturesMixin, RelativeScorer):
    """The relative score plus spatial verification (``verification.py``) of each photo's nearest neighbours.

    Per image: the GeM vector and up to ``verification.MAX_KEYPOINTS`` SIFT keypoints of the same decoded image,
    back in its photo's shape (the aspect ratio given to :meth:`add`).
    Per pair: ``relative + verification.bonus(inliers)``, where the inliers are counted only for pairs that are
    among either photo's ``local_scaling.K`` nearest neighbours (the search that gives ``r``; a re-shoot is near
    its original even when its cosine is low) and whose relative score is at least :attr:`verify_from`. Other
    pairs score their relative score. Counts are cached, so a pair is verified once per run.
    """

    name = "verified"

    def __init__(self, extractor: torch.nn.Module, batch_size: int = 64, device: str = "cpu") -> None:
        super().__init__(extractor, batch_size, device)
        self.keypoints = []
        # Pairs scoring below this cannot reach the threshold with the largest bonus: find_duplicates.py sets it
        # to threshold - verification.MAX_BONUS; by default every neighbour pair is verified.
        self.verify_from = -np.inf
        self._neighbour_codes: np.ndarray | None = None
        self._inliers: dict[int, int] = {}

    def finish(self) -> None:
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
        wanted = codes[verify].tolist()
        todo = sorted({code for code in wanted if code not in self._inliers})
        if todo:
            low, high = np.divmod(np.array(todo, np.int64), n)
            found = verification.match_pairs(self.keypoints, low, high, unique=False)
            self._inliers.update((code, m.inliers) for code, m in zip(todo, found, strict=True))
        inliers = np.zeros(len(codes), np.int32)
        inliers[verify] = [self._inliers[code] for code in wanted]
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

def reference_scorer(
    method: str, backbone: str = scoring_methods.COSINE_BACKBONE, weights: str = "imagenet", device: str = "cpu",
    batch_size: int = 64,
) -> PairScorer:
    """A scorer for a reference method (whash, phash; cosine or relative with the given backbone): the one place
    that builds them, for find_duplicates.py, model_inference.py and calibration."""
    if method in hashing.HASH_FUNCTIONS:
        return HashScorer(method)
    if method in scoring_methods.BACKBONE_METHODS:
        from samespace.backbones import build_feature_extractor

        pooling = "avg" if method == "cosine" else scoring_methods.RELATIVE_POOLING
        extractor = build_feature_extractor(backbone, weights, pooling=pooling).to(device)
        if method == "calibrated":
            from samespace.calibrated_scorer import CalibratedScorer  # it imports this module

            return CalibratedScorer(extractor, batch_size=batch_size, device=device)
        kind = {"cosine": CosineScorer, "relative": RelativeScorer, "verified": VerifiedScorer}[method]
        return kind(extractor, batch_size=batch_size, device=device)
    raise ValueError(f"not a reference method: {method!r} (choose from {scoring_methods.REFERENCE_METHODS})")
