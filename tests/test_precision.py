"""The backbone's precision: fp32 by default and unchanged; bf16 / fp16 autocast as options that keep the features
close, never mix with fp32 ones in a store, and are refused where no backbone runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from samespace import (
    checkpoint_loading,
    decoding,
    errors,
    labelling,
    model_scorer,
    preprocess,
    scorer_choice,
    scoring_methods,
    store_identity,
)
from samespace.backbones import PRECISIONS, build_feature_extractor
from samespace.commands import find


@pytest.fixture(scope="module")
def photos(test_dir: Path) -> torch.Tensor:
    """Eight decoded photos of the generated sample set, as model input."""
    images = np.stack([decoding.load_image(p) for p in labelling.find_images(test_dir)[:8]])
    return preprocess.to_model_input(images)


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def test_reduced_precision_keeps_the_features_close_and_changes_the_identity(photos: torch.Tensor) -> None:
    extractor = build_feature_extractor("efficientnet_lite0", pooling="gem")
    fp32 = unit(extractor(photos))
    fingerprint = extractor.fingerprint()
    assert extractor.precision == "fp32" and fingerprint == build_feature_extractor(
        "efficientnet_lite0", pooling="gem").fingerprint()
    identities = {fingerprint}
    for precision, close in (("bf16", 0.97), ("fp16", 0.999)):
        reduced = unit(extractor.set_precision(precision)(photos))
        assert reduced.dtype == torch.float32
        agreement = (fp32 * reduced).sum(1)
        assert float(agreement.min()) > close and not torch.equal(fp32, reduced)
        identities.add(extractor.fingerprint())
    assert len(identities) == 3  # a store never mixes features of two precisions
    assert torch.equal(unit(extractor.set_precision("fp32")(photos)), fp32)
    assert extractor.fingerprint() == fingerprint
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        extractor.set_precision("fp8")
    assert PRECISIONS == scoring_methods.PRECISIONS


def test_the_option_reaches_the_backbone_and_the_store_identity(trained_checkpoint: Path) -> None:
    plain, _, _ = scorer_choice.choose_scorer("cosine")
    half, _, _ = scorer_choice.choose_scorer("cosine", precision="bf16")
    assert (plain.backbone().precision, half.backbone().precision) == ("fp32", "bf16")
    assert store_identity.scorer_fingerprint(plain) != store_identity.scorer_fingerprint(half)
    model = model_scorer.ModelScorer(checkpoint_loading.load_model(trained_checkpoint))
    before = store_identity.scorer_fingerprint(model)
    model.backbone().set_precision("fp16")
    assert store_identity.scorer_fingerprint(model) != before
    model.backbone().set_precision("fp32")
    assert store_identity.scorer_fingerprint(model) == before
    with pytest.raises(errors.FindDuplicatesError, match="--precision bf16: the phash method runs no backbone"):
        scorer_choice.choose_scorer("phash", precision="bf16")


def test_find_takes_the_option_and_refuses_an_unknown_one(test_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder, out = tmp_path / "photos", tmp_path / "groups.json"
    folder.mkdir()
    for path in sorted(test_dir.rglob("*.jpg"))[:4]:  # a few photos: the option's path, not its quality
        shutil.copyfile(path, folder / path.name)
    assert find.main([str(folder), "--method", "cosine", "--precision", "bf16", "--no-cache", "--no-progress",
                      "--json", str(out)]) == 0
    assert json.loads(out.read_text())["summary"]["precision"] == "bf16"  # said in the outputs too
    with pytest.raises(SystemExit) as exit_info:
        find.main([str(test_dir), "--precision", "fp8"])
    assert exit_info.value.code == 2 and "fp8" in capsys.readouterr().err
