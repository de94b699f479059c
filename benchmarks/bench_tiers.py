"""Match tiers benchmark: are edited copies ``same photo``, byte copies ``identical``, and other pairs neither?

    python benchmarks/bench_tiers.py --split "data/real/Test Data" --json tiers-real.json

For every photo of the split: a byte copy and five edited copies (resize 50 %, JPEG quality 40, crop to the
central 80 %, grayscale, rotation of 10 degrees: devsets.reshooting.edited_copy) are compared with it as
the finder's tiers do (samespace.tiers.pair_tiers, keypoints from decoding each file). Then every pair of two
*different* photos that could be called a copy: the different-shot pairs of the split's manifest (real set) and
the 300 pairs of different places with the highest cosine. Reported: the share of each edit found ``same photo``,
of byte copies found ``identical``, how many different-photo pairs were tagged either, and the calibrated scores of
copies against those of different shots of one place, as scored and as the finder reports them once tiered.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from samespace import decoding, labelling, outputs, scorers, tiers, verification  # noqa: E402
from samespace.devsets import manifests  # noqa: E402
from samespace.devsets.reshooting import COPY_EDITS as EDITS  # noqa: E402
from samespace.devsets.reshooting import edited_copy as edited  # noqa: E402


def decoded(path: Path) -> tuple[np.ndarray, verification.LocalFeatures]:
    """A photo's grey view and keypoints, as the finder's tiers make them."""
    image, aspect = decoding.decode_image(path)
    return verification.gray_view(image, aspect), verification.local_features(image, aspect)


def run(split: Path, workdir: Path, limit: int | None) -> dict[str, Any]:
    paths = labelling.find_images(split)[:limit]
    made: list[Path] = []
    kinds: list[str] = []
    originals: list[int] = []
    for k, path in enumerate(paths):
        img = decoding.to_rgb(Image.open(path))
        copy = workdir / f"{k}_copy{path.suffix}"
        copy.write_bytes(path.read_bytes())
        made.append(copy), kinds.append("byte copy"), originals.append(k)
        for kind in EDITS:
            out = workdir / f"{k}_{kind}.jpg"
            edited(img, kind).save(out, quality=92)
            made.append(out), kinds.append(kind), originals.append(k)
    everything = [*paths, *made]
    views, feats = zip(*(decoded(p) for p in everything), strict=True)
    left = np.array(originals, np.int64)
    right = np.arange(len(paths), len(everything), dtype=np.int64)
    found = tiers.pair_tiers([str(p) for p in everything], left, right, views.__getitem__, feats.__getitem__)
    expected = {"byte copy": tiers.IDENTICAL, **{kind: tiers.SAME_PHOTO for kind in EDITS}}
    recall = {kind: float(np.mean([t == expected[kind] for t, k in zip(found, kinds, strict=True) if k == kind]))
              for kind in expected}
    # different photos: different shots of one place, and the most alike pairs of different places
    labels = labelling.group_ids(paths, split)
    try:
        shots = np.asarray(manifests.shot_ids(paths, split))
    except (OSError, ValueError, KeyError):
        shots = np.arange(len(paths))  # the generated set: every photo its own shot
    scorer = scorers.reference_scorer("calibrated")
    for path in everything:
        image, aspect = decoding.decode_image(path)
        scorer.add(image[None], np.array([aspect]))
    scorer.finish()
    n = len(paths)
    i, j = np.triu_indices(n, 1)
    same_place, same_shot = labels[i] == labels[j], shots[i] == shots[j]
    cosine = np.einsum("ij,ij->i", scorer.vectors[i], scorer.vectors[j])
    other_places = np.flatnonzero(~same_place)
    top = other_places[np.argsort(-cosine[other_places], kind="stable")[:300]]
    different = np.concatenate([np.flatnonzero(same_place & ~same_shot), top])
    tagged = tiers.pair_tiers([str(p) for p in paths], i[different], j[different], views.__getitem__, feats.__getitem__)
    shot_scores = scorer.score(i[same_place & ~same_shot], j[same_place & ~same_shot])
    copy_scores = scorer.score(left, right)
    return {"split": str(split), "photos": n, "recall": recall,
            "different_shot_pairs": int((same_place & ~same_shot).sum()), "other_place_pairs": len(top),
            "different_photos_tagged": {t: int(sum(x == t for x in tagged)) for t in tiers.TIERS},
            "different_photos_tagged_same_photo": [[paths[i[q]].name, paths[j[q]].name] for q, t
                                                   in zip(different, tagged, strict=True) if t != tiers.SAME_SPACE],
            "copy_score_min": float(copy_scores.min()),
            "different_shot_score_max": float(shot_scores.max()) if len(shot_scores) else None,
            # as the finder reports them: a pair's score once its tier is known (tiers.tiered_scores)
            "reported_copy_score_min": float(tiers.tiered_scores(copy_scores, found).min()),
            "reported_different_shot_score_max": float(tiers.tiered_scores(
                shot_scores, [t for q, t in zip(different, tagged, strict=True) if same_place[q] and not same_shot[q]]
            ).max()) if len(shot_scores) else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", type=Path, required=True, help="a labelled split folder, e.g. 'data/real/Test Data'")
    parser.add_argument("--limit", type=int, help="only the first N photos")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-tiers-") as tmp:
        result = run(args.split, Path(tmp), args.limit)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        outputs.atomic_write(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
