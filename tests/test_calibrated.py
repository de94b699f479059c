"""The calibrated method: a pair's score depends on the pair alone, reads as a probability, and match tiers tell
exact and edited copies from re-shoots."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from samespace import (
    background,
    calibrated_fit,
    calibrated_score,
    calibrated_scorer,
    decoding,
    finder,
    result_formats,
    scorer_choice,
    scoring_methods,
    tiers,
    verification,
)
from samespace.devsets import sample_set
from samespace.devsets.reshooting import COPY_EDITS as EDITS
from samespace.devsets.reshooting import edited_copy as edited


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """china.jpg, its five edits and a byte copy; flower.jpg, an unrelated photo (scikit-learn's sample photos)."""
    folder = tmp_path_factory.mktemp("copies")
    china = Image.fromarray(load_sample_image("china.jpg"))
    china.save(folder / "china.jpg", quality=92)
    shutil.copyfile(folder / "china.jpg", folder / "china_copy.jpg")
    for kind in EDITS:
        edited(china, kind).save(folder / f"china_{kind}.jpg", quality=92)
    Image.fromarray(load_sample_image("flower.jpg")).save(folder / "flower.jpg", quality=92)
    return folder


def run(folders: list[Path], threshold: float | None = None) -> finder.Result:
    scorer, chosen, _ = scorer_choice.choose_scorer("calibrated", threshold=threshold)
    return finder.find_duplicates(folders, scorer, chosen, progress=False)


def test_the_shipped_files_match_the_tables() -> None:
    shipped = json.loads(calibrated_score.COEFFICIENTS_FILE.read_text())
    assert shipped["threshold"] == scoring_methods.CALIBRATED_THRESHOLD == scoring_methods.DEFAULT_THRESHOLDS[
        "calibrated"]
    c = calibrated_score.load()
    # more alike, more inliers: more likely the same space; alike to everything: less
    assert c.cosine > 0 and c.inliers > 0 and c.background < 0
    bank = background.load()
    assert bank.vectors.shape == (len(bank.places), 1280) and bank.backbone == scoring_methods.COSINE_BACKBONE
    assert np.allclose(np.linalg.norm(bank.vectors, axis=1), 1.0, atol=1e-5)
    assert shipped["background_photos"] == len(bank.places) == len(set(bank.places))


def test_background_similarity_leaves_out_the_photo_itself() -> None:
    bank = np.eye(4, dtype=np.float32)
    query = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0]], np.float32)
    assert background.similarity(query, bank, k=2).tolist() == pytest.approx([0.0, 0.7])  # 1.0 is itself
    own = np.array([[False] * 4, [False, True, False, False]])
    assert background.similarity(query, bank, k=2, exclude=own).tolist() == pytest.approx([0.0, 0.3])


def test_verification_is_skipped_only_where_it_cannot_change_a_decision() -> None:
    c = calibrated_score.Coefficients(intercept=-26.0, cosine=43.0, background=-20.5, inliers=2.45)
    floor = c.verify_from(0.5)
    below = (floor - 1e-6 - c.intercept) / c.cosine  # the cosine whose evidence-free logit is just under it
    assert c.probability(below, 0.0, verification.CAP) < 0.5 <= c.probability(below + 1e-3, 0.0, verification.CAP)
    assert c.probability(0.0, 0.0, 0) == pytest.approx(calibrated_score.sigmoid(-26.0))


def test_pairs_under_the_cosine_floor_are_never_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scorer verifies a pair only from ``VERIFY_COSINE`` up, as the fit counted inliers, and scores the others
    without evidence."""
    import torch

    c = calibrated_score.Coefficients(intercept=-20.0, cosine=32.0, background=-16.5, inliers=2.8)
    bank = background.Background(np.eye(2, dtype=np.float32), "test", "test", ("a", "b"))
    scorer = calibrated_scorer.CalibratedScorer(torch.nn.Identity(), coefficients=c, reference=bank)
    floor = calibrated_score.VERIFY_COSINE
    angles = np.arccos([1.0, floor - 0.01, floor + 0.01])  # cosines to photo 0: 1, just under and just over
    scorer.vectors = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    scorer.keypoints = [verification.LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))] * 3
    scorer.background_similarity = np.zeros(3)
    scorer.verify_from = c.verify_from(0.35)
    assert c.logit(floor - 0.01, 0.0, 0) > scorer.verify_from  # evidence could lift it: only the floor stops it
    verified = []

    def recorded(a: verification.LocalFeatures, b: verification.LocalFeatures, unique: bool = True) -> object:
        verified.append(1)
        return verification.Match(0, None)

    monkeypatch.setattr(verification, "match", recorded)
    p = scorer.score(np.array([0, 0, 1]), np.array([1, 2, 2]))
    assert len(verified) == 2  # (0, 2) and (1, 2); (0, 1) is under the floor
    assert [left for left, _ in zip(*scorer.near_misses(1.0, 0.0), strict=True)] == [0, 1]
    np.testing.assert_allclose(p, c.probability(np.array([floor - 0.01, floor + 0.01, 0.99969]), 0.0, 0), atol=1e-4)


def test_fit_recovers_the_direction_of_separable_features() -> None:
    rng = np.random.default_rng(0)
    features = []
    for shift in (0.0, 0.05):  # two splits of different sizes weigh the same
        n = 2000
        same = rng.random(n) < 0.1
        cosine = np.where(same, 0.85, 0.55) + shift + rng.normal(0, 0.05, n)
        features.append({"cosine": cosine, "background": rng.normal(0.5, 0.05, n),
                         "inliers": np.where(same & (rng.random(n) < 0.5), 40, rng.integers(0, 6, n)), "same": same})
    c = calibrated_fit.fit_coefficients(features)
    assert c.cosine > 0 and c.inliers > 0  # neither alone separates: both count
    x = features[0]
    assert np.mean((c.probability(x["cosine"], x["background"], x["inliers"]) >= 0.5) == x["same"]) > 0.99


def test_tiers_tell_copies_edits_and_other_photos_apart(copies: Path) -> None:
    result = run([copies])
    names = [Path(p).name for p in result.paths]
    tier = {frozenset((names[i], names[j])): t for i, j, t in zip(result.left, result.right, result.tiers,
                                                                   strict=True)}
    assert tier[frozenset(("china.jpg", "china_copy.jpg"))] == tiers.IDENTICAL
    for kind in EDITS:
        assert tier[frozenset(("china.jpg", f"china_{kind}.jpg"))] == tiers.SAME_PHOTO, kind
    assert not any("flower.jpg" in pair for pair in tier)  # an unrelated photo is in no pair
    [group] = result.groups
    assert sorted(names[k] for k in group) == sorted(["china.jpg", "china_copy.jpg"] +
                                                     [f"china_{k}.jpg" for k in EDITS])
    document = result.to_dict()
    assert all(len(pair) == 4 and pair[3] in tiers.TIERS for pair in document["pairs"])
    # every pair here is a copy, so every score is the copy score, above any different shot's
    assert all(pair[2] == tiers.COPY_SCORE for pair in document["pairs"])


def test_tiers_come_the_same_for_a_method_without_keypoints(copies: Path) -> None:
    scorer, threshold, _ = scorer_choice.choose_scorer("phash", threshold=0.5)
    result = finder.find_duplicates([copies], scorer, threshold, progress=False)
    names = [Path(p).name for p in result.paths]
    by_pair = {frozenset((names[i], names[j])): t for i, j, t in zip(result.left, result.right, result.tiers,
                                                                     strict=True)}
    assert by_pair[frozenset(("china.jpg", "china_copy.jpg"))] == tiers.IDENTICAL
    assert by_pair.get(frozenset(("china.jpg", "china_q40.jpg"))) == tiers.SAME_PHOTO


def _view(image: np.ndarray) -> np.ndarray:
    """A photo's grey view as the tiers see it (decoded square, back in its shape)."""
    h, w = image.shape[:2]
    return verification.gray_view(np.asarray(Image.fromarray(image).resize((256, 256))), w / h)


def _features(image: np.ndarray) -> verification.LocalFeatures:
    h, w = image.shape[:2]
    return verification.local_features(np.asarray(Image.fromarray(image).resize((256, 256))), w / h)


def test_a_different_shot_is_same_space_not_same_photo() -> None:
    """Two photos with a perspective between them (a step aside) and two unrelated photos are never same photo."""
    china = load_sample_image("china.jpg")
    h, w = china.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[0.1 * w, 0.05 * h], [0.95 * w, 0], [w, h], [0.05 * w, 0.9 * h]])
    import cv2

    warped = cv2.warpPerspective(china, cv2.getPerspectiveTransform(src, dst), (w, h))
    found = verification.match(_features(china), _features(warped))
    assert found.inliers >= 20  # the homography fits, and is the start the alignment refines
    assert not tiers.is_same_photo(found, _view(china), _view(warped))
    flower = load_sample_image("flower.jpg")
    assert not tiers.is_same_photo(verification.match(_features(china), _features(flower)), _view(china),
                                   _view(flower))


def test_pixels_decide_same_photo_where_a_homography_fits_a_different_shot() -> None:
    """A crop of china.jpg in which a stripe of the scene moved (a person walked by): the crop's matches still fit
    one homography, but its pixels no longer agree, so it is not the same photo; the plain crop is."""
    china = load_sample_image("china.jpg")
    h, w = china.shape[:2]
    crop = np.ascontiguousarray(china[h // 10: h - h // 10, w // 10: w - w // 10])
    changed = crop.copy()
    third = changed.shape[1] // 3
    changed[:, third: 2 * third] = np.ascontiguousarray(changed[:, third: 2 * third][::-1])  # upside down
    crop_view, changed_view, view = _view(crop), _view(changed), _view(china)
    plain = verification.match(_features(china), _features(crop))
    moved = verification.match(_features(china), _features(changed))
    assert moved.inliers >= tiers.MIN_INLIERS
    assert tiers.is_same_photo(plain, view, crop_view)
    assert not tiers.is_same_photo(moved, view, changed_view)
    agreement = verification.pixel_agreement(view, changed_view, moved.homography)
    assert agreement.overlap > 0.95 and agreement.correlation < tiers.MIN_CORRELATION


def test_a_textureless_copy_is_same_photo_without_keypoints() -> None:
    """A smooth gradient has no keypoints; its resized, recompressed and re-exposed copies are still same photo
    (corner to corner), and another gradient is not."""
    y, x = np.mgrid[0:300, 0:400].astype(np.float64)
    gradient = np.stack([x / 400 * 200 + 20, y / 300 * 180 + 30, (x + y) / 700 * 150 + 50], -1).astype(np.uint8)
    other = np.ascontiguousarray(gradient[::-1, ::-1])
    assert len(_features(gradient).xy) < 4  # nothing for spatial verification to match
    brighter = np.clip(gradient.astype(np.int32) * 9 // 10 + 20, 0, 255).astype(np.uint8)
    half = np.asarray(Image.fromarray(gradient).resize((200, 150), Image.Resampling.LANCZOS))
    no_match = verification.Match(0, None)
    assert tiers.is_same_photo(no_match, _view(gradient), _view(brighter))
    assert tiers.is_same_photo(no_match, _view(gradient), _view(half))
    assert not tiers.is_same_photo(no_match, _view(gradient), _view(other))


def _smooth_scene(seed: int) -> np.ndarray:
    """A photo with almost no keypoints: colour noise blurred to soft blobs, 300 x 400."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (30, 40, 3)).astype(np.float32)
    return np.clip(cv2.resize(cv2.GaussianBlur(noise, (0, 0), 3), (400, 300), interpolation=cv2.INTER_CUBIC) * 1.5
                   - 60, 0, 255).astype(np.uint8)


def test_a_crop_or_turn_of_a_textureless_photo_is_same_photo() -> None:
    """Too few keypoints for a homography: the central 80 % crop and a 10 degree turn (black corners) still line
    up once the grey levels are aligned; the same edits of another smooth scene do not."""
    scene, other = _smooth_scene(1), _smooth_scene(2)
    img = Image.fromarray(scene)
    crop = np.asarray(img.crop((40, 30, 360, 270)))
    turned = np.asarray(img.rotate(10, resample=Image.Resampling.BICUBIC))
    assert len(_features(scene).xy) < 8
    no_match = verification.Match(0, None)
    view = _view(scene)
    for copy in (crop, turned):
        start = verification.pixel_agreement(view, _view(copy), verification.frame_map(view, _view(copy)))
        assert start.correlation < tiers.MIN_CORRELATION  # corner to corner is not enough
        assert tiers.is_same_photo(no_match, view, _view(copy))
        assert tiers.is_same_photo(no_match, _view(copy), view)  # either order
        assert not tiers.is_same_photo(no_match, _view(other), _view(copy))
    # two different scenes turned alike share their black corners, not their content
    other_turned = np.asarray(Image.fromarray(other).rotate(10, resample=Image.Resampling.BICUBIC))
    assert not tiers.is_same_photo(no_match, _view(turned), _view(other_turned))


def test_a_copy_scored_under_the_threshold_is_still_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """A smooth scene and its 10 degree turn: the calibrated probability is far under the threshold (few
    keypoints, a changed pooled vector) but above the copy check's floor, and the pixels show one photo, so the
    pair is reported as same photo with the copy score; an unrelated photo stays out."""
    scene = Image.fromarray(_smooth_scene(1))
    scene.save(tmp_path / "scene.jpg", quality=92)
    scene.rotate(10, resample=Image.Resampling.BICUBIC).save(tmp_path / "scene_turned.jpg", quality=92)
    Image.fromarray(load_sample_image("flower.jpg")).save(tmp_path / "flower.jpg", quality=92)
    scorer, threshold, _ = scorer_choice.choose_scorer("calibrated")
    decoded_again: list[str] = []  # what the copy check and the tiers decode (the photos of checked pairs)

    def counted(path: str | Path) -> tuple[np.ndarray, float]:
        decoded_again.append(Path(path).name)
        return decoding.decode_image(path)

    monkeypatch.setattr(tiers, "decoding", SimpleNamespace(decode_image=counted, read_photo=decoding.read_photo))
    result = finder.find_duplicates([tmp_path], scorer, threshold, progress=False)
    assert sorted(decoded_again) == ["scene.jpg", "scene_turned.jpg"]  # once each, for the check and the tier
    names = [Path(p).name for p in result.paths]
    i, j = names.index("scene.jpg"), names.index("scene_turned.jpg")
    probability = float(scorer.score(np.array([i]), np.array([j]))[0])
    assert calibrated_scorer.COPY_CHECK_FROM <= probability < threshold
    assert result.summary["copies_below_threshold"] == 1
    assert "1 duplicate pair (1 of them a copy under the threshold) in 1 group" in result_formats.summary_line(
        result.summary)
    assert [sorted(names[k] for k in g) for g in result.groups] == [["scene.jpg", "scene_turned.jpg"]]
    assert result.scores.tolist() == [tiers.COPY_SCORE] and result.tiers == [tiers.SAME_PHOTO]


def test_only_maps_an_edit_makes_count() -> None:
    """A crop, resize or turn is nearly a similarity; a fitted map that shears, squeezes, zooms past 2x or mirrors
    is how two different smooth skies line up, and is refused."""
    turn = np.array([[np.cos(0.2), -np.sin(0.2), 12.0], [np.sin(0.2), np.cos(0.2), -3.0], [0.0, 0.0, 1.0]])
    for scale in (0.55, 0.8, 1.0, 1.25, 1.9):
        assert tiers.is_edit(np.diag([scale, scale, 1.0]) @ turn)
    for refused in ([[0.692, -0.325, 91.8], [0.02, 0.922, 17.9], [0, 0, 1]],  # a fit found between two skies
                    [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0, 0, 1]], [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0, 0, 1]],
                    [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0, 0, 1]], [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0, 0, 1]]):
        assert not tiers.is_edit(np.array(refused, np.float64))
    # the top half of a photo stretched to its full height: the pixels agree only through a squeeze
    china = load_sample_image("china.jpg")
    h, w = china.shape[:2]
    stretched = np.asarray(Image.fromarray(np.ascontiguousarray(china[: h // 2])).resize((w, h)))
    view, stretched_view = _view(china), _view(stretched)
    fit = verification.aligned(view, stretched_view, verification.frame_map(view, stretched_view))
    assert fit is not None and not tiers.is_edit(fit)
    assert not tiers.is_same_photo(verification.Match(0, None), view, stretched_view)


def test_a_copy_under_the_threshold_is_found_in_a_library(tmp_path: Path) -> None:
    """New photos against a library: the turned smooth scene (new) and its original (library) are reported as one
    photo; a copy between two new photos is not a library match."""
    new, library = tmp_path / "new", tmp_path / "library"
    new.mkdir(), library.mkdir()
    scene = Image.fromarray(_smooth_scene(1))
    scene.save(library / "scene.jpg", quality=92)
    scene.rotate(10, resample=Image.Resampling.BICUBIC).save(new / "scene_turned.jpg", quality=92)
    scene.rotate(10, resample=Image.Resampling.BICUBIC).save(new / "scene_turned_again.png")
    scorer, threshold, _ = scorer_choice.choose_scorer("calibrated")
    result = finder.find_against([new], [library], scorer, threshold, progress=False)
    names = [Path(p).name for p in result.paths]
    pairs = sorted((names[i], names[j], t) for i, j, t in zip(result.left, result.right, result.tiers, strict=True))
    assert pairs == [("scene_turned.jpg", "scene.jpg", tiers.SAME_PHOTO),
                     ("scene_turned_again.png", "scene.jpg", tiers.SAME_PHOTO)]
    assert result.summary["copies_below_threshold"] == 2 and set(result.scores.tolist()) == {tiers.COPY_SCORE}


def test_copies_score_above_every_different_shot() -> None:
    scores = tiers.tiered_scores(np.array([0.41, 0.9999999, 0.3, 0.55]),
                                 [tiers.SAME_PHOTO, tiers.SAME_SPACE, tiers.IDENTICAL, tiers.SAME_SPACE])
    assert scores.tolist() == [1.0, 0.999999, 1.0, 0.55]
    assert round(0.999999, 6) < round(float(tiers.COPY_SCORE), 6)


def _groups_of(result: finder.Result, names: set[str]) -> set[frozenset[str]]:
    out = set()
    for group in result.groups:
        members = frozenset(result.paths[k] for k in group) & names
        if len(members) > 1:
            out.add(members)
    return out


def _pair_scores(result: finder.Result) -> dict[frozenset[str], float]:
    return {frozenset((result.paths[i], result.paths[j])): float(s)
            for i, j, s in zip(result.left, result.right, result.scores, strict=True)}


# How far a pair's score may move when photos are added: only the last bits of float32 cosines, which a matrix
# product of another size rounds differently (measured: 5e-10 on one of the Test Data's pairs beside 1,000 photos)
SCORE_BOUND = 1e-6


def test_unrelated_photos_move_no_score(copies: Path, test_dir: Path, tmp_path: Path) -> None:
    """The generated Test Data (96 photos, 32 rooms) added to the folder: every pair of the folder's photos keeps
    its score (within :data:`SCORE_BOUND`), and its groups stay."""
    alone = run([copies])
    both = run([copies, test_dir])
    names = set(alone.paths)
    assert _groups_of(both, names) == _groups_of(alone, names)
    scores = _pair_scores(both)
    alone_scores = _pair_scores(alone)
    assert set(alone_scores) <= set(scores)
    assert all(abs(scores[pair] - s) <= SCORE_BOUND for pair, s in alone_scores.items())


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SAMESPACE_LONG_TESTS"), reason="about 16 minutes on 2 cores: set "
                    "SAMESPACE_LONG_TESTS=1 (the 96-photo test above checks the same in the suite)")
def test_a_thousand_unrelated_photos_change_no_group(test_dir: Path, tmp_path: Path) -> None:
    """The generated Test Data (seed 0) beside 1,000-odd photos of other generated rooms (seed 1): the groups of
    the Test Data's photos are the same, and every score between two of them is within :data:`SCORE_BOUND`. (The
    suite's backbone is a random one, so the groups are fewer than with ImageNet weights; the point is that they do
    not move.)"""
    others = sample_set.write_sample_dataset(tmp_path / "others", seed=1, rooms={"Test Data": 85}) / "Test Data"
    assert len(list(others.rglob("*.jpg"))) >= 1000
    alone = run([test_dir])
    both = run([test_dir, others])
    names = set(alone.paths)
    assert len(_groups_of(alone, names)) >= 5
    assert _groups_of(both, names) == _groups_of(alone, names)
    scores = _pair_scores(both)
    assert all(abs(scores[pair] - s) <= SCORE_BOUND for pair, s in _pair_scores(alone).items())


def test_candidate_search_scores_pairs_as_the_exhaustive_search(copies: Path) -> None:
    """Above the exhaustive range the candidates are each photo's nearest neighbours: the pairs they share with the
    exhaustive search get the same scores, and with 7 neighbours (every other photo) the same pairs are found."""
    exhaustive = run([copies])
    scorer, threshold, _ = scorer_choice.choose_scorer("calibrated")
    searched = finder.find_duplicates([copies], scorer, threshold, top_k=7, progress=False)
    assert searched.summary["candidates"] != exhaustive.summary["candidates"]
    assert _pair_scores(searched) == pytest.approx(_pair_scores(exhaustive))
    assert len(_pair_scores(exhaustive)) >= len(EDITS) + 1
