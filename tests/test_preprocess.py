"""Decoding and preprocessing: every mode becomes upright RGB, every broken file raises."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import encoders
from model.preprocess import DecodedImage, decode_image, to_rgb, to_tensor
from tests.conftest import BROKEN_FILES, draw_image, write_broken_images


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_jpeg_decodes_to_rgb_with_size_and_hash():
    data = draw_image(1, (96, 72), "JPEG")
    decoded = decode_image(data, target_size=None)
    assert decoded.rgb.mode == "RGB"
    assert (decoded.width, decoded.height) == (96, 72)
    assert decoded.rgb.size == (96, 72)
    assert decoded.content_hash == hashlib.sha256(data).hexdigest()


def test_jpeg_draft_decodes_smaller_but_reports_full_size():
    data = _encode(Image.new("RGB", (1600, 1200), (10, 200, 30)), "JPEG")
    decoded = decode_image(data, target_size=256)
    assert (decoded.width, decoded.height) == (1600, 1200)
    # DCT scaling by 4 keeps the shorter side >= 256 (1200 / 4 = 300; / 8 would be 150)
    assert decoded.rgb.size == (400, 300)


def test_png_rgba_flattens_transparency_onto_white():
    img = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # fully transparent red
    img.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    decoded = decode_image(_encode(img, "PNG"), target_size=256)
    assert decoded.rgb.mode == "RGB"
    assert decoded.rgb.getpixel((5, 5)) == (255, 255, 255)
    assert decoded.rgb.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency_and_grayscale_become_rgb():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.putpixel((1, 1), 1)
    decoded = decode_image(_encode(pal, "PNG", transparency=0), target_size=None)
    assert decoded.rgb.mode == "RGB"
    assert decoded.rgb.getpixel((0, 0)) == (255, 255, 255)  # transparent index -> white
    assert decoded.rgb.getpixel((1, 1)) == (200, 10, 10)

    gray = decode_image(_encode(Image.new("L", (9, 7), 77), "PNG"), target_size=None)
    assert gray.rgb.mode == "RGB" and gray.rgb.getpixel((3, 3)) == (77, 77, 77)
    assert (gray.width, gray.height) == (9, 7)


def test_sixteen_bit_gray_is_scaled_not_clipped():
    img = Image.new("I;16", (4, 4), 0x8000)  # half of full scale
    assert to_rgb(img).getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (80, 40), (0, 0, 0))
    for x in range(10):  # a white block at the stored top-left corner
        for y in range(10):
            img.putpixel((x, y), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    decoded = decode_image(_encode(img, "JPEG", exif=exif, quality=95), target_size=None)
    assert (decoded.width, decoded.height) == (40, 80)
    assert decoded.rgb.size == (40, 80)
    # after a clockwise turn the stored top-left corner sits at the top-right
    assert decoded.rgb.getpixel((35, 4))[0] > 200
    assert decoded.rgb.getpixel((4, 4))[0] < 60


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_broken_files_raise(tmp_path: Path, name: str):
    files = {p.name: p for p in write_broken_images(tmp_path)}
    with pytest.raises(Exception) as info:
        decode_image(files[name].read_bytes(), target_size=256)
    assert type(info.value).__name__ in ("OSError", "UnidentifiedImageError")


def test_truncated_jpeg_fails_even_without_draft(tmp_path: Path):
    files = {p.name: p for p in write_broken_images(tmp_path)}
    with pytest.raises(OSError, match="(?i)truncated"):
        decode_image(files["truncated.jpg"].read_bytes(), target_size=None)


def test_decompression_bomb_is_rejected(monkeypatch: pytest.MonkeyPatch):
    data = draw_image(2, (96, 72), "PNG")
    # between the limit and twice it Pillow itself only warns; we must still refuse
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 96 * 72 - 1)
    with pytest.raises(Image.DecompressionBombError), pytest.warns(Image.DecompressionBombWarning):
        decode_image(data, target_size=None)
    # over twice the limit Pillow raises on its own
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        decode_image(data, target_size=None)


def test_to_tensor_applies_the_encoders_transform():
    transform, resize = encoders.preprocessing(encoders.EFFICIENTNET_LITE0, encoders.WEIGHTS_RANDOM)
    decoded = decode_image(draw_image(3, (300, 200), "JPEG"), target_size=resize)
    tensor = to_tensor(decoded, transform)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, 224, 224)
    # Lite's (p - 127) / 128 keeps values inside [-1, 1]
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0


def test_to_tensor_rejects_a_transform_that_is_not_chw():
    decoded = DecodedImage(rgb=Image.new("RGB", (4, 4)), width=4, height=4, content_hash="x")
    with pytest.raises(TypeError):
        to_tensor(decoded, lambda img: torch.zeros(1, 3, 4, 4))


# ---------------------------------------------------------------------------
# The fast path: resize-and-crop in one Pillow call, uint8, normalised later per batch
# ---------------------------------------------------------------------------
def _photo(size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(sum(size))
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1) + rng.normal(0, 8, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(800, 600), (600, 800), (1280, 300), (224, 224), (150, 90)])
@pytest.mark.parametrize("encoder", ["resnet50", "efficientnet_lite0"])
def test_crop_uint8_matches_the_weights_own_transform(size, encoder):
    from model import encoders
    from model.preprocess import CropSpec, crop_uint8

    transform, resize = encoders.preprocessing(encoder, "random")
    spec = CropSpec.from_transform(transform)
    decoded = decode_image(_photo(size), resize)
    fast = crop_uint8(decoded, spec)
    assert fast.dtype == torch.uint8 and tuple(fast.shape) == (3, spec.crop_size, spec.crop_size)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    normalised = (fast.float() / 255 - mean) / std
    reference = to_tensor(decode_image(_photo(size), None), transform)
    # the same region of the picture at the same scale: only resampling details differ
    difference = (normalised - reference).abs()
    assert difference.mean() < 0.05, difference.mean()
    cosine = torch.nn.functional.cosine_similarity(normalised.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.995


def test_crop_box_mirrors_torchvision_resize_then_centre_crop():
    from model.preprocess import CropSpec, crop_box

    spec = CropSpec(resize_size=256, crop_size=224, mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="bilinear")
    # 800x600 -> 341x256 -> crop offset (58, 16) -> scaled back by 600/256
    left, top, right, bottom = crop_box(800, 600, spec)
    scale = 600 / 256
    assert (left, top) == pytest.approx((58 * 800 / 341, 16 * scale))
    assert right - left == pytest.approx(224 * 800 / 341) and bottom - top == pytest.approx(224 * scale)
    # a portrait picture: the same, transposed
    assert crop_box(600, 800, spec) == pytest.approx((top, left, bottom, right))
