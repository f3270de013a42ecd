"""Seeded, generated images (no download): what the bench, the demo corpus and the tests feed in.

- `draw_image`: a small picture, one coloured shape on a coloured background (the tests' inputs);
- `make_photo`: a photographic-looking JPEG of a typical web size, some with an EXIF orientation;
- `make_graphic`: a clip-art-like RGBA PNG on a transparent background;
- `write_broken_files`: the three broken files a crawl brings (a truncated JPEG, zero bytes, an
  error page saved under an image's name).

The demo corpus's pictures of its object classes (one drawer per tag) are the demo's own:
`pipelines/demo/drawing.py`. Every generator here is deterministic for its seed, so an output
that was published (the bench's cached sets, the tests' expectations) stays the same bytes.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


# ---------------------------------------------------------------------------
# A shape on a background
# ---------------------------------------------------------------------------
def draw_image(seed: int, size: tuple[int, int] = (96, 72), fmt: str = "JPEG") -> bytes:
    """A seeded picture: a coloured shape on a coloured background, encoded as fmt."""
    rng = random.Random(seed)
    mode = "RGBA" if fmt == "PNG" and seed % 2 else "RGB"
    bg = tuple(rng.randrange(256) for _ in range(3)) + ((rng.randrange(256),) if mode == "RGBA" else ())
    img = Image.new(mode, size, bg)
    d = ImageDraw.Draw(img)
    w, h = size
    x0, y0 = rng.randrange(w // 2), rng.randrange(h // 2)
    fill = tuple(rng.randrange(256) for _ in range(len(bg)))
    d.ellipse([x0, y0, x0 + w // 3, y0 + h // 3], fill=fill)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Web-sized photos and graphics
# ---------------------------------------------------------------------------
JPEG_QUALITY = 85
# typical web photo sizes (width, height), landscape and portrait
PHOTO_SIZES = (
    (640, 480),
    (800, 600),
    (1024, 768),
    (1280, 960),
    (960, 640),
    (1200, 800),
    (480, 640),
    (600, 800),
    (768, 1024),
)
GRAPHIC_MIN_SIDE, GRAPHIC_MAX_SIDE = 512, 1600
EXIF_EVERY = 10  # every tenth photo carries an EXIF orientation (cameras and phones write it)
EXIF_ORIENTATIONS = (6, 8, 3)  # rotate 90 CW, 90 CCW, 180
EXIF_ORIENTATION_TAG = 0x0112
# each generator draws from its own numpy stream, keyed (seed, stream, index)
_PHOTO_STREAM, _GRAPHIC_STREAM = 0, 1


def _rng(stream: int, index: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def photo_size(index: int, seed: int = 0) -> tuple[int, int]:
    """The stored (width, height) of photo `index` (before its EXIF rotation, if any)."""
    return PHOTO_SIZES[int(_rng(_PHOTO_STREAM, index, seed).integers(len(PHOTO_SIZES)))]


def graphic_size(index: int, seed: int = 0) -> tuple[int, int]:
    """The (width, height) of graphic `index`."""
    w, h = _rng(_GRAPHIC_STREAM, index, seed).integers(GRAPHIC_MIN_SIDE, GRAPHIC_MAX_SIDE + 1, size=2)
    return int(w), int(h)


def photo_orientation(index: int) -> int | None:
    """The EXIF orientation photo `index` carries: every EXIF_EVERY-th one has one."""
    if index % EXIF_EVERY != EXIF_EVERY - 1:
        return None
    return EXIF_ORIENTATIONS[(index // EXIF_EVERY) % len(EXIF_ORIENTATIONS)]


def _random_colour(rng: np.random.Generator, alpha: int | None = None) -> tuple[int, ...]:
    rgb = tuple(int(v) for v in rng.integers(0, 256, size=3))
    return rgb if alpha is None else rgb + (alpha,)


def _random_box(rng: np.random.Generator, w: int, h: int) -> list[int]:
    x0, y0 = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
    x1 = x0 + int(rng.integers(w // 10, w // 2))
    y1 = y0 + int(rng.integers(h // 10, h // 2))
    return [x0, y0, x1, y1]


def make_photo(index: int, seed: int = 0) -> bytes:
    """A photographic-looking JPEG: smooth colour fields, a few soft shapes, sensor-like noise."""
    rng = _rng(_PHOTO_STREAM, index, seed)
    w, h = photo_size(index, seed)
    # low-frequency colour field: a tiny random grid upscaled with a smooth filter
    grid = rng.integers(0, 256, size=(int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3), dtype=np.uint8)
    img = Image.fromarray(grid, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        box = _random_box(rng, w, h)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=_random_colour(rng))
        else:
            draw.rectangle(box, fill=_random_colour(rng))
    pixels = np.asarray(img, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 6.0
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    exif = Image.Exif()
    orientation = photo_orientation(index)
    if orientation:
        exif[EXIF_ORIENTATION_TAG] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    return buf.getvalue()


def make_graphic(index: int, seed: int = 0) -> bytes:
    """A clip-art-like RGBA PNG: flat-colour shapes with outlines on a transparent background."""
    rng = _rng(_GRAPHIC_STREAM, index, seed)
    w, h = graphic_size(index, seed)
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    outline = max(2, min(w, h) // 100)
    for _ in range(int(rng.integers(3, 9))):
        box = _random_box(rng, w, h)
        alpha = 255 if rng.random() < 0.8 else int(rng.integers(96, 255))
        fill, edge = _random_colour(rng, alpha), _random_colour(rng, 255)
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse(box, fill=fill, outline=edge, width=outline)
        elif shape == 1:
            draw.rounded_rectangle(box, radius=min(w, h) // 20, fill=fill, outline=edge, width=outline)
        else:
            x0, y0, x1, y1 = box
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=fill, outline=edge, width=outline)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Broken files
# ---------------------------------------------------------------------------
TRUNCATED, EMPTY, NOT_AN_IMAGE = "truncated.jpg", "empty.jpg", "text.jpg"
ERROR_PAGE = "<html><body>404 not found</body></html>\n"  # what a crawler stores for a dead link


def broken_file_names(prefix: str = "") -> tuple[str, str, str]:
    """The names write_broken_files gives its three files: truncated, empty, not an image."""
    return tuple(prefix + name for name in (TRUNCATED, EMPTY, NOT_AN_IMAGE))  # type: ignore[return-value]


def write_broken_files(folder: str | Path, good_jpeg: bytes | None = None, prefix: str = "") -> list[Path]:
    """A truncated JPEG (the first third of good_jpeg, default a 200x150 draw_image), a zero-byte
    file and an error page named .jpg, under folder; their paths, in broken_file_names' order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = draw_image(0, (200, 150)) if good_jpeg is None else good_jpeg
    paths = [folder / name for name in broken_file_names(prefix)]
    paths[0].write_bytes(good[: len(good) // 3])
    paths[1].write_bytes(b"")
    paths[2].write_text(ERROR_PAGE)
    return paths
