"""The prevalence collections (samespace.devsets.prevalence): counts of photos and true pairs, determinism, on disk."""

from __future__ import annotations

import numpy as np
import pytest

from samespace import labelling
from samespace.devsets import prevalence

# 10 places: 4 of 3 photos, 2 of 2, 4 singletons (22 photos, 4 * 3 + 2 * 1 = 14 true pairs)
SIZES = [3, 3, 3, 3, 2, 2, 1, 1, 1, 1]
LABELS = np.repeat(np.arange(len(SIZES)), SIZES)
FILES = [f"room/city_{100 + place}_{n}.jpg" for place, size in enumerate(SIZES) for n in range(1, size + 1)]


def test_full_share_is_the_split() -> None:
    c = prevalence.choose(FILES, LABELS, 1.0)
    assert c.files == tuple(FILES) and c.true_pairs == 14 and c.places == 10


@pytest.mark.parametrize(("share", "photos", "pairs"), [(0.5, 10 + 6, 3 + 3 + 1), (0.0, 10, 0)])
def test_share_counts(share: float, photos: int, pairs: int) -> None:
    # share 0.5 of the 6 multi-photo places: 3 kept whole; which ones is seeded, so count both possibilities
    c = prevalence.choose(FILES, LABELS, share, seed=3)
    whole = [p for p in set(c.labels.tolist()) if (c.labels == p).sum() > 1]
    assert len(whole) == round(share * 6)
    assert len(c.files) == 10 + sum(SIZES[p] - 1 for p in whole)
    assert c.true_pairs == sum(SIZES[p] * (SIZES[p] - 1) // 2 for p in whole)
    assert len(set(c.labels.tolist())) == 10  # every place is there, with one photo at least
    if share == 0.0:
        assert (len(c.files), c.true_pairs) == (photos, pairs)


def test_share_zero_has_no_duplicate_and_sizes() -> None:
    for seed in range(5):
        c = prevalence.choose(FILES, LABELS, 0.0, places=4, seed=seed)
        assert len(c.files) == 4 and c.true_pairs == 0 and len(set(c.labels.tolist())) == 4
    with pytest.raises(ValueError):
        prevalence.choose(FILES, LABELS, 0.0, places=11)
    with pytest.raises(ValueError):
        prevalence.choose(FILES, LABELS, 1.5)


def test_same_seed_same_collection() -> None:
    a = prevalence.choose(FILES, LABELS, 0.3, places=8, seed=7)
    b = prevalence.choose(FILES, LABELS, 0.3, places=8, seed=7)
    assert a.files == b.files and np.array_equal(a.labels, b.labels)
    others = {prevalence.choose(FILES, LABELS, 0.3, places=8, seed=s).files for s in range(8)}
    assert len(others) > 1  # the seed matters


def test_write_keeps_the_layout(tmp_path) -> None:
    split = tmp_path / "split"
    for rel in FILES:
        (split / rel).parent.mkdir(parents=True, exist_ok=True)
        (split / rel).write_bytes(rel.encode())
    c = prevalence.choose(FILES, LABELS, 0.5, seed=1)
    out = prevalence.write(c, split, tmp_path / "collection")
    paths = labelling.find_images(out)
    assert [p.relative_to(out).as_posix() for p in paths] == list(c.files)
    assert np.array_equal(np.unique(labelling.group_ids(paths, out), return_inverse=True)[1],
                          np.unique(c.labels, return_inverse=True)[1])
