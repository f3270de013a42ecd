"""Encoders: pooled features of the right size, deterministic random weights, offline ImageNet
weights for efficientnet_lite0, state-dict files in and out. Nothing here downloads anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet50

from model import encoders

SMALL = 64  # both architectures pool globally, so a small input keeps resnet50 tests fast


def _features(spec: encoders.EncoderSpec, size: int = SMALL) -> torch.Tensor:
    x = torch.linspace(-1, 1, 2 * 3 * size * size).reshape(2, 3, size, size)
    with torch.no_grad():
        return spec.module(x)


@pytest.mark.parametrize("name", encoders.ENCODERS)
def test_random_weights_give_pooled_features_deterministically(name: str):
    a = encoders.build_encoder(name, encoders.WEIGHTS_RANDOM)
    b = encoders.build_encoder(name, encoders.WEIGHTS_RANDOM)
    assert a.dim == encoders.DIMS[name] == {"resnet50": 2048, "efficientnet_lite0": 1280}[name]
    assert not a.module.training
    fa, fb = _features(a), _features(b)
    assert fa.shape == (2, a.dim)
    assert torch.equal(fa, fb)
    assert "random" in a.weights


def test_random_build_does_not_disturb_the_callers_random_stream():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    encoders.build_encoder(encoders.EFFICIENTNET_LITE0, encoders.WEIGHTS_RANDOM)
    assert torch.equal(torch.rand(3), expected)


def test_efficientnet_lite0_imagenet_loads_offline_from_the_package_file():
    spec = encoders.build_encoder(encoders.EFFICIENTNET_LITE0, encoders.WEIGHTS_IMAGENET)
    assert spec.dim == 1280
    assert "efficientnet-lite0-57934424.pth" in spec.weights
    feats = _features(spec, 224)
    assert feats.shape == (2, 1280)
    # the trained weights differ from the seeded random ones
    random_feats = _features(encoders.build_encoder(encoders.EFFICIENTNET_LITE0, encoders.WEIGHTS_RANDOM), 224)
    assert not torch.allclose(feats, random_feats)
    # ReLU6 before the pool: pooled activations lie in [0, 6]
    assert feats.min() >= 0 and feats.max() <= 6


def test_preprocessing_matches_each_weights_family():
    lite, lite_resize = encoders.preprocessing(encoders.EFFICIENTNET_LITE0, encoders.WEIGHTS_IMAGENET)
    assert lite_resize == 256 and list(lite.crop_size) == [224]
    assert lite.mean == pytest.approx([127 / 255] * 3) and lite.std == pytest.approx([128 / 255] * 3)
    tv, tv_resize = encoders.preprocessing(encoders.RESNET50, encoders.WEIGHTS_IMAGENET)
    assert tv_resize == 232 and tv.mean == pytest.approx([0.485, 0.456, 0.406])  # IMAGENET1K_V2's own
    _, random_resize = encoders.preprocessing(encoders.RESNET50, encoders.WEIGHTS_RANDOM)
    assert random_resize == 256


@pytest.mark.parametrize("name", encoders.ENCODERS)
def test_state_dict_path_round_trip(tmp_path: Path, name: str):
    source = encoders.build_encoder(name, encoders.WEIGHTS_RANDOM)
    # perturb so the file's weights are distinguishable from a fresh random build
    with torch.no_grad():
        for p in source.module.parameters():
            p.add_(0.01)
    path = tmp_path / f"{name}.pt"
    path.write_bytes(encoders.state_dict_bytes(source.module))
    loaded = encoders.build_encoder(name, str(path))
    assert str(path) in loaded.weights and "sha256" in loaded.weights
    assert torch.allclose(_features(loaded), _features(source))


def test_full_classifier_state_dict_has_its_head_dropped(tmp_path: Path):
    torch.manual_seed(5)
    classifier = resnet50(weights=None)
    path = tmp_path / "classifier.pt"
    torch.save(classifier.state_dict(), path)
    spec = encoders.build_encoder(encoders.RESNET50, str(path))
    assert torch.equal(spec.module.conv1.weight, classifier.conv1.weight)
    assert _features(spec).shape == (2, 2048)


def test_bad_weights_files_fail_loudly(tmp_path: Path):
    wrong_arch = tmp_path / "lite.pt"
    wrong_arch.write_bytes(
        encoders.state_dict_bytes(encoders.build_encoder(encoders.EFFICIENTNET_LITE0, "random").module)
    )
    with pytest.raises(RuntimeError, match="state_dict"):
        encoders.build_encoder(encoders.RESNET50, str(wrong_arch))
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(ValueError, match="state dict"):
        encoders.build_encoder(encoders.RESNET50, str(not_a_state_dict))
    with pytest.raises(FileNotFoundError):
        encoders.build_encoder(encoders.RESNET50, str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown image encoder"):
        encoders.build_encoder("vgg16", "random")


def test_architecture_matches_the_built_encoders_parameter_names():
    for name in encoders.ENCODERS:
        built = encoders.build_encoder(name, encoders.WEIGHTS_RANDOM).module.state_dict().keys()
        assert set(encoders.encoder_architecture(name).state_dict().keys()) == set(built)
        assert not any(k.startswith(("fc.", "_fc.")) for k in built)


def test_the_registry_is_the_one_place_an_encoder_is_described():
    from pipelines import extract_images

    assert encoders.ENCODERS == tuple(encoders.REGISTRY) and set(encoders.DIMS) == set(encoders.REGISTRY)
    choices = next(a.choices for a in extract_images.get_args_parser()._actions if a.dest == "image_model")
    assert tuple(choices) == encoders.ENCODERS
    with pytest.raises(ValueError, match="unknown image encoder"):
        encoders.get_encoder("vgg16")
