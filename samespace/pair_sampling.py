"""Training pairs: every positive pair of a group, negatives sampled by wHash similarity (seed 0), x64 variants."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samespace import hashing, preprocess

# A positive pair's flags: variant of image 1 in the low 3 bits, of image 2 in the high 3 bits.
N_PAIR_FLAGS = preprocess.N_VARIANTS * preprocess.N_VARIANTS  # the x64 upsampling
# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------

PAIRINGS = ("faithful", "unique")


def _check_pairing(pairing: str) -> None:
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


def positive_pairs(groups: np.ndarray, pairing: str = "faithful") -> np.ndarray:
    """All duplicate pairs as an (P, 2) int64 array, sorted.

    ``faithful``: ordered pairs (i, j) within a group, including i == j (the published counts).
    ``unique``: unordered pairs i < j, no self-pairs.
    """
    _check_pairing(pairing)
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    boundaries = np.flatnonzero(np.diff(groups[order])) + 1
    out = []
    for members in np.split(order, boundaries):
        members = np.sort(members)
        i, j = np.meshgrid(members, members, indexing="ij")
        keep = i < j if pairing == "unique" else np.ones_like(i, dtype=bool)
        out.append(np.stack([i[keep], j[keep]], axis=1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)


def count_pairs(groups: np.ndarray, pairing: str = "faithful") -> tuple[int, int]:
    """(positive, negative) pair counts without building any pair."""
    _check_pairing(pairing)
    n = len(groups)
    sizes = np.unique(groups, return_counts=True)[1].astype(np.int64)
    if pairing == "faithful":
        positives = int((sizes**2).sum())
        return positives, n * n - positives
    positives = int((sizes * (sizes - 1) // 2).sum())
    return positives, n * (n - 1) // 2 - positives


def _uniform(seed: int, flat_index: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in (0, 1): splitmix64 of (seed, pair index).

    A pair's random number depends only on the seed and its index, so the sample is the same for any
    block size, process order or machine.
    """
    with np.errstate(over="ignore"):
        z = flat_index.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def sample_negative_pairs(
    hashes: np.ndarray,
    groups: np.ndarray,
    n_samples: int,
    pairing: str = "faithful",
    seed: int = 0,
    block_rows: int = 256,
) -> np.ndarray:
    """Weighted sample of non-duplicate pairs without replacement, weight = e^-hamming(wHash).

    Efraimidis-Spirakis exponential keys: each pair gets key ``-log(U) / w``; the ``n_samples``
    smallest keys are a weighted sample without replacement. In logs the key is
    ``log(-log U) + hamming``. Rows are streamed in blocks with a running top-k, so memory is
    O(N * block_rows + n_samples) and never N^2. Returns (n_samples, 2) int64 sorted by (i, j).
    """
    _check_pairing(pairing)
    hashes = np.asarray(hashes, dtype=np.uint64)
    groups = np.asarray(groups)
    n = len(hashes)
    if n_samples <= 0 or n == 0:
        return np.zeros((0, 2), np.int64)
    cols = np.arange(n, dtype=np.int64)
    best_keys = np.zeros(0, np.float64)
    best_flat = np.zeros(0, np.int64)
    for start in range(0, n, block_rows):
        rows = np.arange(start, min(start + block_rows, n), dtype=np.int64)
        flat = rows[:, None] * n + cols[None, :]
        keys = np.log(-np.log(_uniform(seed, flat))) + hashing.hamming(hashes[rows, None], hashes[None, :])
        excluded = groups[rows, None] == groups[None, :]
        if pairing == "unique":
            excluded |= cols[None, :] <= rows[:, None]
        keys[excluded] = np.inf
        keys, flat = keys.ravel(), flat.ravel()
        keys = np.concatenate([best_keys, keys])
        flat = np.concatenate([best_flat, flat])
        if len(keys) > n_samples:
            top = np.argpartition(keys, n_samples - 1)[:n_samples]
            keys, flat = keys[top], flat[top]
        finite = np.isfinite(keys)
        best_keys, best_flat = keys[finite], flat[finite]
    best_flat.sort()
    return np.stack([best_flat // n, best_flat % n], axis=1)


def pair_variants(flags: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """A pair's flags -> (variant of the first image, variant of the second image)."""
    flags = np.asarray(flags, dtype=np.int64)
    return flags % preprocess.N_VARIANTS, flags // preprocess.N_VARIANTS


@dataclass(frozen=True)
class PairSet:
    """Pairs of image indices with their label and augmentation flags (see N_PAIR_FLAGS)."""

    left: np.ndarray
    right: np.ndarray
    label: np.ndarray  # uint8, 1 = duplicate
    flags: np.ndarray  # uint8, variant of left | variant of right << 3

    def __len__(self) -> int:
        return len(self.left)


def build_pairs(
    groups: np.ndarray,
    hashes: np.ndarray | None = None,
    pairing: str = "faithful",
    balanced: bool = True,
    seed: int = 0,
    augment_negatives: bool = False,
) -> PairSet:
    """The pairs of a split.

    ``balanced=True`` (training, faithful evaluation): every positive pair x64 (all flag combinations)
    plus as many hash-weighted negatives, sampled without replacement. Needs ``hashes``.
    ``balanced=False`` (honest evaluation): every pair once, natural class balance, no augmentation.

    ``augment_negatives``: as published (False), only positives are ever flipped or rotated, so "is either
    image augmented?" predicts the label and a network can learn that shortcut instead of the rooms. True
    gives each negative pair random flags too (seeded), so augmentation carries no label information.
    """
    groups = np.asarray(groups)
    positives = positive_pairs(groups, pairing)
    if not balanced:
        n = len(groups)
        if pairing == "unique":
            left, right = np.triu_indices(n, k=1)
        else:
            left, right = np.divmod(np.arange(n * n, dtype=np.int64), n)
        label = (groups[left] == groups[right]).astype(np.uint8)
        return PairSet(left.astype(np.int64), right.astype(np.int64), label, np.zeros(len(left), np.uint8))
    if hashes is None:
        raise ValueError("balanced pairs need the images' hashes")
    flags = np.arange(N_PAIR_FLAGS, dtype=np.uint8)
    pos_left = np.repeat(positives[:, 0], N_PAIR_FLAGS)
    pos_right = np.repeat(positives[:, 1], N_PAIR_FLAGS)
    pos_flags = np.tile(flags, len(positives))
    negatives = sample_negative_pairs(hashes, groups, len(pos_left), pairing=pairing, seed=seed)
    neg_flags = np.zeros(len(negatives), np.uint8)
    if augment_negatives:
        neg_flags = np.random.default_rng(seed).integers(0, N_PAIR_FLAGS, len(negatives)).astype(np.uint8)
    return PairSet(
        left=np.concatenate([pos_left, negatives[:, 0]]),
        right=np.concatenate([pos_right, negatives[:, 1]]),
        label=np.concatenate([np.ones(len(pos_left), np.uint8), np.zeros(len(negatives), np.uint8)]),
        flags=np.concatenate([pos_flags, neg_flags]),
    )
