"""Spatial verification (verification.py) and the verified scorer (scorers.VerifiedScorer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_improved import _rotated_zoomed

from samespace import (
    batch_decoding,
    decoding,
    embedding_store,
    errors,
    finder,
    keypoint_table,
    labelling,
    local_scaling,
    machine,
    matching,
    run_memory,
    scorers,
    scoring_methods,
    store_identity,
    verification,
)
from samespace.commands import find


@pytest.fixture(scope="module")
def tilted_files(train_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A generated room photo (640 x 480), its 25-degree rotated and zoomed copy, and the next five photos of the
    split."""
    folder = tmp_path_factory.mktemp("tilted")
    paths = labelling.find_images(train_dir)
    photo = Image.open(paths[0]).convert("RGB").resize((640, 480))
    photo.save(folder / "a.jpg", quality=92)
    _rotated_zoomed(photo, 25).save(folder / "b.jpg", quality=92)
    return [folder / "a.jpg", folder / "b.jpg", *paths[3:8]]


@pytest.fixture(scope="module")
def tilted(tilted_files: list[Path]) -> list[np.ndarray]:
    """The decoded squares of :func:`tilted_files`."""
    return [decoding.load_image(p) for p in tilted_files]


def test_a_tilted_copy_shares_inliers_and_other_rooms_do_not(tilted: list[np.ndarray]) -> None:
    features = [verification.local_features(image) for image in tilted]
    copy = verification.count_inliers(features[0], features[1], unique=False)  # as the verified method counts
    others = [verification.count_inliers(features[0], f, unique=False) for f in features[2:]]
    assert copy == 14  # measured; the same every run (OpenCV's RANSAC draws from a fixed seed)
    assert verification.count_inliers(features[0], features[1], unique=False) == copy
    assert max(others) <= verification.FLOOR  # chance matches earn no bonus
    assert verification.bonus(np.array([copy]))[0] == pytest.approx(verification.WEIGHT * np.sqrt(14 - 4))
    # One match per keypoint (the default, the calibrated method's): fewer, still far above chance
    assert verification.count_inliers(features[0], features[1]) == 11
    assert max(verification.count_inliers(features[0], f) for f in features[2:]) <= verification.FLOOR


def test_one_to_one_keeps_the_nearest_match_of_each_keypoint() -> None:
    # Keypoints 0, 1 and 3 of the first photo all match keypoint 7 of the second (a repeated texture), 2 matches 5
    kept = verification.one_to_one(np.array([7, 7, 5, 7]), np.array([0.30, 0.10, 0.40, 0.20], np.float32))
    assert kept.tolist() == [1, 2]
    assert verification.one_to_one(np.array([3, 3]), np.array([0.5, 0.5])).tolist() == [0]  # a tie: the first
    assert verification.one_to_one(np.zeros(0, np.int64), np.zeros(0)).tolist() == []


def test_ratio_matches_are_opencvs(tilted: list[np.ndarray]) -> None:
    import cv2

    roots = [verification.root_sift(verification.local_features(image).descriptors) for image in tilted[:4]]
    for a in roots:
        for b in roots:
            query, train, distance = verification.ratio_matches(a, b)
            knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a, b, k=2)
            good = [m[0] for m in knn if len(m) == 2 and m[0].distance < verification.RATIO * m[1].distance]
            assert query.tolist() == [m.queryIdx for m in good]
            assert train.tolist() == [m.trainIdx for m in good]
            np.testing.assert_allclose(distance, [m.distance for m in good], atol=1e-5)
    assert len(verification.ratio_matches(roots[0], roots[1])[0]) > 20  # the tilted copy: many matches
    assert len(verification.ratio_matches(roots[0], roots[0][:1])[0]) == 0  # one keypoint: no second nearest


def test_photos_are_matched_in_their_own_shape(tilted_files: list[Path]) -> None:
    decoded = [decoding.decode_image(p) for p in tilted_files]
    assert [round(aspect, 4) for _, aspect in decoded] == [1.3333] * 7
    square = decoded[0][0]
    assert verification.unsquashed(square, 4 / 3).shape == (222, 296, 3)  # 256 x 256 pixels' worth, 4:3
    assert verification.unsquashed(square, 3 / 4).shape == (296, 222, 3)
    assert verification.unsquashed(square, 1.0) is square
    assert verification.unsquashed(square, 100.0).shape == (128, 512, 3)  # clipped to MAX_ASPECT (4:1)
    features = [verification.local_features(image, aspect) for image, aspect in decoded]
    in_squares = verification.count_inliers(*(verification.local_features(image) for image, _ in decoded[:2]),
                                            unique=False)
    # measured: 14 in the squares, 15 in shape with OpenCV 5.0 (14 with 4.10, whose SIFT differs in the last bits)
    assert in_squares == 14 and verification.count_inliers(features[0], features[1], unique=False) >= in_squares
    assert max(verification.count_inliers(features[0], f, unique=False) for f in features[2:]) <= verification.FLOOR


def test_find_duplicates_hands_each_photos_aspect_to_the_scorer(tmp_path: Path) -> None:
    for name, size in {"wide.jpg": (300, 100), "tall.jpg": (100, 400), "unreadable.jpg": None}.items():
        if size is None:
            (tmp_path / name).write_bytes(b"not a jpeg")
        else:
            Image.new("RGB", size, (90, 120, 150)).save(tmp_path / name)
    paths = [tmp_path / n for n in ("wide.jpg", "unreadable.jpg", "tall.jpg")]
    (batch,) = batch_decoding.decoded_batches(paths, batch_size=3)
    assert batch.indices == [0, 2] and [k for k, _ in batch.skipped] == [1]
    np.testing.assert_allclose(batch.aspects, [3.0, 0.25])
    with pytest.warns(UserWarning, match="skipped .*unreadable.jpg"):
        images, aspects, kept, skipped = decoding.decode_images(paths, progress=False)
    np.testing.assert_allclose(aspects, [3.0, 0.25])
    assert kept == [0, 2] and len(skipped) == 1 and images.shape == (2, 256, 256, 3)
    with pytest.raises(ValueError, match="2 images but aspect ratios of shape"):
        scorers.HashScorer("whash").add(images, np.ones(3))


def test_features_are_deterministic_and_bounded(tilted: list[np.ndarray]) -> None:
    first, again = verification.local_features(tilted[0]), verification.local_features(tilted[0])
    np.testing.assert_array_equal(first.xy, again.xy)
    np.testing.assert_array_equal(first.descriptors, again.descriptors)
    assert first.descriptors.dtype == np.uint8 and first.descriptors.shape == (len(first.xy), 128)
    few = verification.local_features(tilted[0], max_keypoints=10)
    assert len(few.xy) == 10


def test_a_flat_image_has_no_keypoints_and_verifies_nothing(tilted: list[np.ndarray]) -> None:
    flat = verification.local_features(np.full((256, 256, 3), 128, np.uint8))
    assert flat.xy.shape == (0, 2) and flat.descriptors.shape == (0, 128)
    assert verification.count_inliers(flat, verification.local_features(tilted[0])) == 0


@pytest.mark.parametrize("in_memory", [100, 0, 2])  # in memory; in the scratch file at once; moved there on the way
def test_packed_keypoints_come_back_from_the_table_as_found(tilted: list[np.ndarray], in_memory: int) -> None:
    features = [verification.local_features(image) for image in tilted[:2]]
    features.append(verification.local_features(np.zeros((256, 256, 3), np.uint8)))  # no keypoints at all
    fields = verification.pack(features)
    assert fields["keypoint_descriptors"].shape == (3, verification.MAX_KEYPOINTS, 128)
    assert fields["keypoint_count"].tolist() == [len(f.xy) for f in features]
    table = keypoint_table.KeypointTable(in_memory=in_memory)
    table.append({name: array[:1] for name, array in fields.items()})
    assert len(table[0].xy) == len(features[0].xy)  # read before more are appended
    table.extend(features[1:])
    assert len(table) == 3 and table.spilled == (in_memory < 3)
    table.extend(features[:1])
    for before, after in zip([*features, features[0]], table, strict=True):
        np.testing.assert_array_equal(before.xy, after.xy)
        np.testing.assert_array_equal(before.descriptors, after.descriptors)
        assert after.xy.dtype == np.float32 and after.descriptors.dtype == np.uint8
    assert [len(f.xy) for f in table[-2:]] == [0, len(features[0].xy)]
    with pytest.raises(IndexError, match="photo 4 of 4"):
        table[4]


def test_bonus_is_zero_up_to_the_floor_then_grows_to_its_cap() -> None:
    inliers = np.array([0, verification.FLOOR, verification.FLOOR + 1, 25, verification.CAP, 10 * verification.CAP])
    b = verification.bonus(inliers)
    assert b[0] == b[1] == 0.0 and b[2] == pytest.approx(verification.WEIGHT)
    assert np.all(np.diff(b) >= 0) and b[-1] == b[-2] == pytest.approx(verification.MAX_BONUS)


def _scorers(images: np.ndarray) -> tuple[scorers.RelativeScorer, scorers.VerifiedScorer]:
    relative, verified = scorers.reference_scorer("relative"), scorers.reference_scorer("verified")
    assert isinstance(relative, scorers.RelativeScorer) and isinstance(verified, scorers.VerifiedScorer)
    for scorer in (relative, verified):
        scorer.add(images)
        scorer.finish()
    return relative, verified


def test_verified_is_relative_plus_the_bonus_of_neighbour_pairs(train_dir: Path) -> None:
    """Pairs among either photo's K nearest get the bonus of their inliers, every other pair its relative score;
    the dense rows (exhaustive search) equal the pair scores."""
    images = np.stack([decoding.load_image(p) for p in labelling.find_images(train_dir)[:40]])
    relative, verified = _scorers(images)
    n = len(images)
    left, right = matching.upper_pairs(0, n, n)
    base, scores = relative.score(left, right), verified.score(left, right)
    codes = verified.neighbour_codes()
    assert len(codes) >= n * local_scaling.K // 2
    neighbour = np.isin(left * n + right, codes)
    np.testing.assert_array_equal(scores[~neighbour], base[~neighbour])
    inliers = np.array([verification.count_inliers(verified.keypoints[a], verified.keypoints[b], unique=False)
                        for a, b in zip(left[neighbour], right[neighbour], strict=True)])
    np.testing.assert_allclose(scores[neighbour], base[neighbour] + verification.bonus(inliers), atol=1e-12)
    assert (inliers > verification.FLOOR).sum() >= 5  # the generated duplicates verify
    np.testing.assert_allclose(verified.score(right, left), scores, atol=1e-12)  # symmetric
    dense = np.concatenate([verified.score_rows(s, min(s + 16, n)) for s in range(0, n, 16)])
    np.testing.assert_allclose(dense[left, right], scores, atol=1e-6)
    np.testing.assert_allclose(dense[right, left], scores, atol=1e-6)


def test_pairs_the_bonus_cannot_lift_are_not_verified(train_dir: Path) -> None:
    images = np.stack([decoding.load_image(p) for p in labelling.find_images(train_dir)[:20]])
    relative, verified = _scorers(images)
    verified.verify_from = 10.0  # above every relative score: nothing is verified
    left, right = matching.upper_pairs(0, 20, 20)
    np.testing.assert_array_equal(verified.score(left, right), relative.score(left, right))
    assert verified._inliers == {}


def test_verified_embeddings_round_trip_through_the_store(train_dir: Path, tmp_path: Path) -> None:
    images = np.stack([decoding.load_image(p) for p in labelling.find_images(train_dir)[:12]])
    direct = scorers.reference_scorer("verified")
    direct.add(images)
    direct.finish()
    fingerprint = store_identity.scorer_fingerprint(direct)
    assert fingerprint != store_identity.scorer_fingerprint(scorers.reference_scorer("relative"))
    store = embedding_store.EmbeddingStore(fingerprint, "verified", direct.fields)
    store.add([f"k{i}" for i in range(12)], direct.embed(images))
    store.save(tmp_path / "store.npz")
    loaded = embedding_store.open_store(tmp_path / "store.npz", fingerprint, "verified", direct.fields, strict=True)
    again = scorers.reference_scorer("verified")
    again.add_embeddings(loaded.get([f"k{i}" for i in range(12)]))
    again.finish()
    left, right = matching.upper_pairs(0, 12, 12)
    np.testing.assert_array_equal(again.score(left, right), direct.score(left, right))


def test_find_duplicates_method_verified_with_and_without_the_store(test_dir: Path, tmp_path: Path) -> None:
    """``--method verified`` end to end: its default threshold, the same groups from the store as without it, and
    at least the groups relative finds on the sample Test Data (verification only adds to scores)."""
    import json

    def run(*argv: str) -> dict:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}.json"
        assert find.main([str(test_dir), "--no-progress", "--json", str(out), *argv]) == 0
        return json.loads(out.read_text())

    def pairs(document: dict) -> set[tuple[str, str]]:
        return {(min(p[0], p[1]), max(p[0], p[1])) for p in document["pairs"]}

    plain = run("--method", "verified", "--no-cache")
    assert plain["summary"]["threshold"] == scoring_methods.DEFAULT_THRESHOLDS["verified"]
    first = run("--method", "verified", "--store", str(tmp_path / "store.npz"))
    second = run("--method", "verified", "--store", str(tmp_path / "store.npz"))
    assert second["summary"]["embedded"] == 0 and second["summary"]["from_store"] == plain["summary"]["images"]
    assert pairs(plain) == pairs(first) == pairs(second) and len(plain["groups"]) >= 5
    lower = run(
        "--method", "verified", "--no-cache", "--threshold", str(scoring_methods.DEFAULT_THRESHOLDS["relative"])
    )
    relative = run("--method", "relative", "--no-cache")
    assert pairs(relative) <= pairs(lower)  # at relative's own threshold, verified keeps every relative pair


def test_a_tilted_copy_is_a_duplicate_with_method_verified(tilted_files: list[Path]) -> None:
    """The 25-degree rotated, zoomed copy, in its 4:3 shape as find_duplicates.py decodes it: relative 0.426 plus
    the bonus of its inliers (15 with OpenCV 5.0, 14 with 4.10), over the default threshold."""
    args = find.build_parser().parse_args(["photos", "--method", "verified"])
    scorer, threshold, _ = find.build_scorer(args, "cpu")
    assert isinstance(scorer, scorers.VerifiedScorer) and threshold == scoring_methods.DEFAULT_THRESHOLDS["verified"]
    assert scorer.verify_from == pytest.approx(threshold - verification.MAX_BONUS)
    (batch,) = batch_decoding.decoded_batches(tilted_files[:2], batch_size=2)
    scorer.add(batch.images, batch.aspects)
    scorer.finish()
    score = float(scorer.score(np.array([0]), np.array([1]))[0])
    inliers = verification.count_inliers(scorer.keypoints[0], scorer.keypoints[1], unique=False)
    assert inliers >= 14 and score == pytest.approx(0.426 + verification.bonus(np.array([inliers]))[0], abs=0.005)
    assert score >= threshold


def test_method_verified_refuses_up_front_a_collection_whose_keypoints_do_not_fit(
    tilted_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keypoints are held until scoring: beyond the scorer's memory budget they go to a scratch file, which must fit
    in its folder; a store that is not saved during the run holds its new rows in memory (twice while saving). A run
    whose keypoints fit neither is refused before any photo is decoded (exit 2, one line naming the count and the way
    out), not after hours of embedding."""
    folder = tilted_files[0].parent
    n = len(labelling.find_images(folder))
    record = keypoint_table.record_dtype().itemsize
    assert record == 68_004
    decoded = []
    monkeypatch.setattr(batch_decoding, "decode_path", lambda path: decoded.append(path) or "not reached")
    monkeypatch.setattr(batch_decoding, "decode_path_keyed", lambda path: decoded.append(path) or "not reached")
    monkeypatch.setattr(keypoint_table, "default_in_memory", lambda *_: 1)
    monkeypatch.setattr(keypoint_table, "scratch_space", lambda: ("/scratch", (n - 1) * record - 1))
    out = tmp_path / "dups.json"
    assert find.main([str(folder), "--method", "calibrated", "--no-cache", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "\nerror: --method calibrated keeps about 68 KB" in "\n" + err and "in /scratch, which has" in err
    assert "TMPDIR" in err
    assert decoded == [] and not out.exists()
    monkeypatch.setattr(keypoint_table, "scratch_space", lambda: ("/scratch", (n - 1) * record))  # just enough
    run_memory.check_memory(n, scorers.reference_scorer("verified"))
    # A store nobody saves during the run: its new rows must fit in memory
    monkeypatch.setattr(machine, "physical_memory", lambda: 4 * n * record - 2)
    with pytest.raises(errors.FindDuplicatesError, match=r"^--method verified holds about 68 KB of keypoints per "
                       r"photo new to the embedding store .* 2 new photos .*part of the collection at a time"):
        run_memory.check_memory(0, scorers.reference_scorer("verified"), new_store_rows=n)
    monkeypatch.setattr(machine, "physical_memory", lambda: 4 * n * record)  # exactly half: allowed
    run_memory.check_memory(0, scorers.reference_scorer("verified"), new_store_rows=n)
    monkeypatch.setattr(machine, "physical_memory", lambda: 1)  # the relative method keeps no keypoints
    run_memory.check_memory(10**9, scorers.reference_scorer("relative"), new_store_rows=10**9)


def test_a_store_holding_too_many_new_rows_is_saved_early_and_mapped_back(
    tilted_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """find saves its store during the run once the new rows take EARLY_SAVE_SHARE of the memory, then reads them
    back mapped: the run goes on with the same result and the store holds every photo."""
    folder = tilted_files[0].parent.parent / "early"
    folder.mkdir(exist_ok=True)
    for path in tilted_files:
        (folder / path.name).write_bytes(path.read_bytes())
    plain = tmp_path / "plain.json"
    assert find.main([str(folder), "--method", "verified", "--no-cache", "--json", str(plain)]) == 0
    reloads = []
    original = embedding_store.EmbeddingStore.reload
    monkeypatch.setattr(embedding_store.EmbeddingStore, "reload",
                        lambda self, path: reloads.append(self.rows_in_memory()) or original(self, path))
    record = keypoint_table.record_dtype().itemsize
    monkeypatch.setattr(machine, "physical_memory", lambda: 8 * record)  # early saves once a row is held
    monkeypatch.setattr(keypoint_table, "default_in_memory", lambda *_: 10**6)
    early, store = tmp_path / "early.json", tmp_path / "store.npz"
    assert find.main([str(folder), "--method", "verified", "--store", str(store), "--json", str(early),
                      "--batch-size", "2"]) == 0
    assert len(reloads) >= 2 and all(rows >= 1 for rows in reloads)
    assert f"store: {store} ({len(tilted_files)} photos)" in capsys.readouterr().out
    scorer = scorers.reference_scorer("verified")
    read = embedding_store.open_store(store, store_identity.scorer_fingerprint(scorer), scorer.name, scorer.fields,
                                      strict=True)
    assert len(read) == len(tilted_files)
    first, second = (json.loads(p.read_text()) for p in (plain, early))
    assert first["groups"] == second["groups"] and first["pairs"] == second["pairs"]


@pytest.mark.parametrize("method", ["verified", "calibrated"])
def test_keypoints_in_the_scratch_file_give_the_same_duplicates(
    tilted_files: list[Path], monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """A run whose keypoints outgrow the memory budget scores every pair as one that holds them in memory."""
    folder = tilted_files[0].parent
    documents = []
    for in_memory in (10**6, 1):
        monkeypatch.setattr(keypoint_table, "default_in_memory", lambda *_, in_memory=in_memory: in_memory)
        scorer = scorers.reference_scorer(method)
        result = finder.find_duplicates([folder], scorer, threshold=0.3, progress=False)
        assert isinstance(scorer.keypoints, keypoint_table.KeypointTable)
        assert scorer.keypoints.spilled == (in_memory == 1)
        document = result.to_dict()
        documents.append((document["groups"], document["pairs"]))
    assert documents[0] == documents[1] and len(documents[0][1]) >= 1


def test_pairs_verified_in_threads_match_one_by_one(tilted: list[np.ndarray]) -> None:
    features = [verification.local_features(image) for image in tilted]
    left, right = matching.upper_pairs(0, len(features), len(features))
    left, right = np.tile(left, 7), np.tile(right, 7)  # 147 pairs: enough to be shared among threads
    assert len(left) >= 2 * verification.PAIRS_PER_TASK
    for unique in (True, False):
        alone = [verification.match(features[i], features[j], unique) for i, j in zip(left, right, strict=True)]
        shared = verification.match_pairs(features, left, right, unique, workers=3)
        assert [m.inliers for m in shared] == [m.inliers for m in alone]
        assert max(m.inliers for m in alone) >= 11  # the tilted copy
        for x, y in zip(alone, shared, strict=True):
            assert (x.homography is None) == (y.homography is None)
            assert x.homography is None or np.array_equal(x.homography, y.homography)


def test_a_scratch_file_that_cannot_be_made_names_its_folder(tmp_path: Path) -> None:
    fields = verification.pack([verification.LocalFeatures(np.zeros((4, 2), np.float32), np.ones((4, 128), np.uint8))])
    table = keypoint_table.KeypointTable(in_memory=0, folder=str(tmp_path / "missing"))
    with pytest.raises(OSError, match=r"missing: cannot create the keypoints' scratch file .*set TMPDIR"):
        table.append(fields)
