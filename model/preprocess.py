"""Image decoding and the one preprocessing step shared by extraction and anything else.

`decode_image` turns raw bytes into an upright RGB picture (or raises: the caller records the
exception class), `to_tensor` applies an encoder's own transform to it. Nothing here knows Beam.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from typing import Callable

import torch
from PIL import Image, ImageOps

# EXIF orientations that turn the picture a quarter (the stored width is the displayed height)
_QUARTER_TURNS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112
_BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


@dataclasses.dataclass
class DecodedImage:
    rgb: Image.Image
    width: int  # full-resolution size as displayed (EXIF orientation applied), not the draft's
    height: int
    content_hash: str  # sha256 hex of the encoded bytes


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_pixel_limit(size: tuple[int, int]) -> None:
    """Reject what Pillow would only warn about (MAX_IMAGE_PIXELS < pixels <= 2x that).

    Pillow raises DecompressionBombError itself above twice the limit and merely warns between
    the limit and twice it. A warnings filter is process-global and not thread-safe (Beam workers
    decode on several threads), so the same limit is enforced here with Pillow's own error class.
    """
    limit = Image.MAX_IMAGE_PIXELS
    pixels = size[0] * size[1]
    if limit and pixels > limit:
        raise Image.DecompressionBombError(
            f"image has {pixels} pixels, over the limit of {limit} (Image.MAX_IMAGE_PIXELS)"
        )


def _displayed_size(img: Image.Image) -> tuple[int, int]:
    width, height = img.size
    orientation = img.getexif().get(_EXIF_ORIENTATION)
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become white rather than whatever colour they hide."""
    if _has_transparency(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in _SIXTEEN_BIT:
        # Pillow's conversion of 16-bit grey clips at 255 instead of scaling: scale first
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes, target_size: int | None) -> DecodedImage:
    """Decode bytes into an upright RGB image; raise on anything unreadable.

    target_size is the shorter side the caller will resize to: JPEGs are then decoded at the
    smallest DCT scale that keeps both sides at least that large (much faster for big photos).
    """
    digest = content_hash(data)
    img = Image.open(io.BytesIO(data))
    _check_pixel_limit(img.size)
    width, height = _displayed_size(img)
    if target_size and img.format == "JPEG":
        img.draft("RGB", (target_size, target_size))
    # load() here so truncated or corrupt files fail in this function, not later in a transform
    img.load()
    img = ImageOps.exif_transpose(img)
    return DecodedImage(rgb=to_rgb(img), width=width, height=height, content_hash=digest)


def to_tensor(decoded: DecodedImage, transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """The encoder's own transform applied to a decoded image: a CHW float32 tensor."""
    tensor = transform(decoded.rgb)
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
        raise TypeError(f"transform must return a CHW tensor, got {type(tensor).__name__}")
    return tensor.to(torch.float32).contiguous()
