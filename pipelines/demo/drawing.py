"""The demo corpus's pictures: one object of a class on a solid, gradient or noise background,
with light clutter, varied in shape, size, position, rotation and colour so that a feature must
see the object, not its colour. The objects themselves are drawn by `objects.py`.
"""

from __future__ import annotations

import colorsys
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipelines.demo.objects import CLASSES, Colour

# ---------------------------------------------------------------------------
# Colours
# ---------------------------------------------------------------------------
def _random_colour(rng: random.Random) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.35, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _contrasting(rng: random.Random, against: Colour, min_distance: float = 140.0) -> Colour:
    """A random colour far enough from the background's mean that the object stays visible."""
    best = _random_colour(rng)
    for _ in range(30):
        if math.dist(best, against) >= min_distance:
            break
        candidate = _random_colour(rng)
        if math.dist(candidate, against) > math.dist(best, against):
            best = candidate
    return best


# ---------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------
def _background(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, Colour]:
    """A solid, gradient or noise background and its mean colour."""
    w, h = size
    kind = rng.choice(("solid", "gradient", "noise"))
    a = _random_colour(rng)
    if kind == "solid":
        return Image.new("RGB", size, a), a
    nprng = np.random.default_rng(rng.getrandbits(32))
    if kind == "gradient":
        b = _random_colour(rng)
        t = np.linspace(0.0, 1.0, w if rng.random() < 0.5 else h, dtype=np.float32)
        ramp = np.outer(1 - t, a) + np.outer(t, b)
        arr = np.broadcast_to(ramp[None, :, :], (h, w, 3)) if len(t) == w else np.broadcast_to(ramp[:, None, :], (h, w, 3))
    else:
        coarse = nprng.normal(0, 45, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
        smooth = np.asarray(
            Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        arr = smooth - 128 + np.asarray(a, dtype=np.float32) + nprng.standard_normal((h, w, 3), dtype=np.float32) * 12
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    mean = tuple(int(v) for v in arr[::4, ::4].reshape(-1, 3).mean(axis=0))  # a sample is enough
    return Image.fromarray(np.ascontiguousarray(arr), "RGB"), mean  # type: ignore[return-value]


def _clutter(d: ImageDraw.ImageDraw, rng: random.Random, size: tuple[int, int]) -> None:
    """A few small marks (specks, strokes, small boxes) so the object is not alone on the canvas."""
    w, h = size
    small = max(3, int(min(w, h) * 0.07))
    for _ in range(rng.randint(2, 6)):
        c = _random_colour(rng)
        x, y = rng.randrange(w), rng.randrange(h)
        kind = rng.randrange(3)
        if kind == 0:
            d.ellipse([x, y, x + rng.randint(2, small), y + rng.randint(2, small)], fill=c)
        elif kind == 1:
            d.line([(x, y), (x + rng.randint(-small * 2, small * 2), y + rng.randint(-small * 2, small * 2))], fill=c, width=rng.randint(1, 2))
        else:
            d.rectangle([x, y, x + rng.randint(2, small), y + rng.randint(2, small)], outline=c)


def draw_picture(tag: str, rng: random.Random, size: tuple[int, int], transparent: bool = False) -> Image.Image:
    """One picture of a class: background, clutter, then the object, varied by rng.

    With `transparent`, the background is fully transparent (RGBA) and only the object and the
    clutter are opaque, as web PNGs often are.
    """
    drawer, max_rotation, mirror = CLASSES[tag]
    w, h = size
    background, mean = _background(rng, size)
    colour = _contrasting(rng, mean)
    canvas = background.convert("RGBA")
    if transparent:
        canvas.putalpha(0)
    _clutter(ImageDraw.Draw(canvas), rng, size)

    half = int(min(w, h) * rng.uniform(0.26, 0.42))
    layer = Image.new("RGBA", (2 * half, 2 * half), (0, 0, 0, 0))
    drawer(ImageDraw.Draw(layer), float(half), colour, rng)
    if mirror and rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if max_rotation:
        layer = layer.rotate(rng.uniform(-max_rotation, max_rotation), resample=Image.Resampling.BILINEAR, expand=True)
    lw, lh = layer.size
    # anywhere inside the frame; a rotated layer wider than the frame overhangs (its corners are empty)
    x = rng.randint(min(0, w - lw), max(0, w - lw))
    y = rng.randint(min(0, h - lh), max(0, h - lh))
    canvas.alpha_composite(layer, (x, y))
    if rng.random() < 0.2:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return canvas if transparent else canvas.convert("RGB")
