"""Image decoding and the one preprocessing step shared by extraction and anything else.

`decode_image` turns raw bytes into an upright RGB picture (or raises: the caller records the
exception class), `to_tensor` applies an encoder's own transform to it. Nothing here knows Beam.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch  # decoding needs no torch (fetch, rank); the tensor steps import it when called

from model.image_formats import ALLOWED_IMAGE_FORMATS, open_image  # noqa: F401 - the one allowlist, re-exported

# EXIF orientations that turn the picture a quarter (the stored width is the displayed height)
_QUARTER_TURNS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112
_BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")



@dataclasses.dataclass
class DecodedImage:
    rgb: Image.Image  # upright; RGB unless decoded with keep_mode (then RGB, RGBA, L, P, ...)
    width: int  # full-resolution size as displayed (EXIF orientation applied), not the draft's
    height: int
    content_hash: str  # sha256 hex of the encoded bytes
    frames: int = 1  # more than 1: animated (the first frame is what is decoded and encoded)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frame_count(img: Image.Image) -> int:
    """Frames of an opened image: more than 1 for animated GIF/PNG/WebP, multi-page TIFF, MPO.

    Asked only when the plugin says the image is animated (n_frames may walk the whole file);
    Pillow returns to the frame it was on.
    """
    return int(getattr(img, "n_frames", 1)) if getattr(img, "is_animated", False) else 1


def check_pixel_limit(size: tuple[int, int]) -> None:
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


def displayed_size(img: Image.Image) -> tuple[int, int]:
    width, height = img.size
    orientation = img.getexif().get(EXIF_ORIENTATION)
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


def decode_image(data: bytes, target_size: int | None, *, keep_mode: bool = False) -> DecodedImage:
    """Decode bytes into an upright RGB image; raise on anything unreadable.

    target_size is the shorter side the caller will resize to: JPEGs are then decoded at the
    smallest DCT scale that keeps both sides at least that large (much faster for big photos).
    keep_mode leaves the pixels in their own mode (RGBA, P, L, ...) for crop_uint8, which turns
    only the small crop into RGB: flattening transparency at full size costs more than decoding.
    """
    digest = content_hash(data)
    img = open_image(data)
    check_pixel_limit(img.size)
    width, height = displayed_size(img)
    frames = frame_count(img)
    if target_size and img.format == "JPEG":
        img.draft("RGB", (target_size, target_size))
    # load() here so truncated or corrupt files fail in this function, not later in a transform
    img.load()
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        # exif_transpose copies the whole picture even when nothing turns: only call it when needed
        img = ImageOps.exif_transpose(img)
    if not keep_mode:
        img = to_rgb(img)
    return DecodedImage(rgb=img, width=width, height=height, content_hash=digest, frames=frames)


def to_tensor(decoded: DecodedImage, transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """The encoder's own transform applied to a decoded image: a CHW float32 tensor."""
    import torch

    tensor = transform(decoded.rgb)
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
        raise TypeError(f"transform must return a CHW tensor, got {type(tensor).__name__}")
    return tensor.to(torch.float32).contiguous()


# ---------------------------------------------------------------------------
# The fast path: one Pillow call resizes only the centre crop, to uint8; normalisation happens
# later on the whole batch (on the inference device), where it is one vectorised op.
# ---------------------------------------------------------------------------
_PIL_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
# Pillow first shrinks by an integer factor with a box filter while the image stays at least this
# many times larger than the target, then resamples: much faster for big PNGs, and the output
# differs from a full resample by less than JPEG noise.
REDUCING_GAP = 3.0
_RESIZABLE_MODES = ("RGB", "RGBA", "L", "LA")


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """An ImageClassification preset as numbers: resize the shorter side, centre crop, normalise."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # a key of _PIL_RESAMPLE

    @classmethod
    def from_transform(cls, transform) -> "CropSpec":
        """Read the numbers off torchvision's preset, so the weights' own preprocessing is kept."""
        return cls(
            resize_size=int(transform.resize_size[0]),
            crop_size=int(transform.crop_size[0]),
            mean=tuple(float(v) for v in transform.mean),
            std=tuple(float(v) for v in transform.std),
            interpolation=str(transform.interpolation.value),
        )


def crop_box(width: int, height: int, spec: CropSpec) -> tuple[float, float, float, float]:
    """The source region that resize-shorter-side-then-centre-crop would keep, in source pixels.

    Mirrors torchvision: the long side becomes int(resize * long / short), the crop's offset is
    round((resized - crop) / 2).
    """
    short, long_ = (width, height) if width <= height else (height, width)
    resized_long = int(spec.resize_size * long_ / short)
    resized_w, resized_h = (spec.resize_size, resized_long) if width <= height else (resized_long, spec.resize_size)
    crop = spec.crop_size
    left = int(round((resized_w - crop) / 2.0))
    top = int(round((resized_h - crop) / 2.0))
    sx, sy = width / resized_w, height / resized_h
    return (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)


def crop_uint8(decoded: DecodedImage, spec: CropSpec) -> torch.Tensor:
    """Resize-and-centre-crop in one Pillow call: a uint8 CHW tensor (crop x crop).

    The box is computed on the decoded picture's own size, which a JPEG draft decode may have
    reduced by a power of two: the same region of the scene either way.
    """
    import torch

    img = decoded.rgb
    if img.mode not in _RESIZABLE_MODES:
        # palette, CMYK, 16-bit...: to a mode Pillow resizes directly (transparency kept)
        img = img.convert("RGBA") if _has_transparency(img) else to_rgb(img)
    box = crop_box(img.width, img.height, spec)
    size = (spec.crop_size, spec.crop_size)
    # Pillow resizes RGBA and LA with premultiplied alpha, so colours under transparent pixels
    # do not bleed in; transparency is flattened onto white afterwards, on the crop alone
    out = to_rgb(img.resize(size, _PIL_RESAMPLE[spec.interpolation], box=box, reducing_gap=REDUCING_GAP))
    # one copy out of Pillow; CHW is a view of the HWC pixels (channels_last strides), and the
    # batch is stacked and laid out once, on the inference device
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)
