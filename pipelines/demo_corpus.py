"""The built-in demo corpus: drawn pictures of everyday objects with crawled-looking tags.

Generated, seeded and offline: no download. It imitates what makes a real crawl hard:
  * every picture shows one object class, drawn with varied shape, size, position, rotation,
    colour and background (solid, gradient or noise) plus light clutter, so a feature must see
    the object, not its colour;
  * 20% of the pictures carry a wrong tag (another tag drawn uniformly), as crawled tags do;
  * tags arrive with raw variation (capitals, extra spaces) and a few exact duplicate rows;
  * JPEG and PNG (RGB, RGBA and palette, some transparent) at different sizes;
  * three broken files are listed too (truncated JPEG, zero bytes, text named .jpg);
  * two tags are two words ("fire truck", "traffic light") and one tag's word ("hourglass") never
    occurs in the captions, so it is out of vocabulary for the demo word vectors.

Files written under the folder:
  manifest.jsonl      {"uri": <path relative to the manifest>, "tag": <crawled tag, raw>}, in crawl order
  ground_truth.jsonl  {"uri", "tag": <crawled tag, normalised>, "true_tag"}; evaluation reads it
  captions.txt        one caption a line, generated from the true classes
  word_vectors.bin    a small Word2Vec trained on the captions, word2vec binary format
  images/             the pictures
"""

from __future__ import annotations

import colorsys
import dataclasses
import io
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model import schema, synthetic_images, tags

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 2400
DEFAULT_CAPTIONS = 6000
MISLABEL_FRACTION = 0.2
MIN_SIDE, MAX_SIDE = 96, 320
PNG_FRACTION = 0.35

MANIFEST_NAME = "manifest.jsonl"
GROUND_TRUTH_NAME = "ground_truth.jsonl"
CAPTIONS_NAME = "captions.txt"
WORD_VECTORS_NAME = "word_vectors.bin"
IMAGES_DIRNAME = "images"

# The one tag whose word the captions never use: out of vocabulary for the demo word vectors.
OOV_TAG = "hourglass"
MULTI_WORD_TAGS = ("fire truck", "traffic light")

BROKEN_PREFIX = "broken-"
BROKEN_FILES = synthetic_images.broken_file_names(BROKEN_PREFIX)
BROKEN_TRUNCATED, BROKEN_EMPTY, BROKEN_TEXT = BROKEN_FILES

Colour = tuple[int, int, int]
Point = tuple[float, float]
# A drawer paints one object centred at (r, r) on a transparent square layer of side 2r.
Drawer = Callable[[ImageDraw.ImageDraw, float, Colour, random.Random], None]


@dataclasses.dataclass(frozen=True)
class DemoCorpus:
    folder: Path
    manifest: Path
    ground_truth: Path
    captions: Path
    images_dir: Path
    word_vectors: Path
    n_images: int  # good pictures
    n_rows: int  # manifest rows: pictures + duplicates + broken files
    n_mislabelled: int
    n_duplicates: int
    n_broken: int
    n_captions: int
    tags: tuple[str, ...]
    oov_tag: str = OOV_TAG
    multi_word_tags: tuple[str, ...] = MULTI_WORD_TAGS

    def summary_line(self) -> str:
        return (
            f"{self.n_images} images over {len(self.tags)} tags ({self.n_mislabelled} mislabelled), "
            f"{self.n_rows} manifest rows ({self.n_duplicates} duplicates, {self.n_broken} broken files), "
            f"{self.n_captions} captions, in {self.folder}"
        )


# ---------------------------------------------------------------------------
# Geometry and colour helpers
# ---------------------------------------------------------------------------
def _regular(cx: float, cy: float, radius: float, n: int, start_deg: float = -90.0) -> list[Point]:
    step = 2 * math.pi / n
    start = math.radians(start_deg)
    return [(cx + radius * math.cos(start + k * step), cy + radius * math.sin(start + k * step)) for k in range(n)]


def _shade(c: Colour, factor: float) -> Colour:
    """Darker (factor < 1) or lighter (factor > 1) version of a colour, clipped to 0..255."""
    if factor <= 1:
        return tuple(int(v * factor) for v in c)  # type: ignore[return-value]
    return tuple(int(v + (255 - v) * (factor - 1)) for v in c)  # type: ignore[return-value]


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
# Object drawers: one per class. r is the layer's half side; keep shapes inside 0.95 r.
# ---------------------------------------------------------------------------
def _draw_circle(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    k = r * rng.uniform(0.75, 0.92)
    aspect = rng.uniform(0.9, 1.1)
    d.ellipse([r - k, r - k * aspect, r + k, r + k * aspect], fill=c)


def _draw_ring(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    k = r * rng.uniform(0.75, 0.92)
    d.ellipse([r - k, r - k, r + k, r + k], outline=c, width=max(2, int(k * rng.uniform(0.18, 0.32))))


def _draw_square(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    k = r * rng.uniform(0.55, 0.68)
    aspect = rng.uniform(0.88, 1.12)
    d.rectangle([r - k, r - k * aspect, r + k, r + k * aspect], fill=c)


def _draw_diamond(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    h = r * rng.uniform(0.8, 0.92)
    w = h * rng.uniform(0.5, 0.7)
    d.polygon([(r, r - h), (r + w, r), (r, r + h), (r - w, r)], fill=c)


def _draw_triangle(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    k = r * rng.uniform(0.8, 0.92)
    pts = _regular(r, r + k * 0.15, k, 3)
    d.polygon(pts, fill=c)


def _draw_star(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    n = rng.choice((5, 5, 6))
    outer = r * rng.uniform(0.82, 0.93)
    inner = outer * rng.uniform(0.36, 0.48)
    pts: list[Point] = []
    for po, pi in zip(_regular(r, r, outer, n), _regular(r, r, inner, n, -90 + 180 / n)):
        pts += [po, pi]
    d.polygon(pts, fill=c)


def _draw_heart(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    k = r * rng.uniform(0.8, 0.9)
    lobe = k * 0.52
    d.ellipse([r - k, r - k * 0.7, r - k + 2 * lobe, r - k * 0.7 + 2 * lobe], fill=c)
    d.ellipse([r + k - 2 * lobe, r - k * 0.7, r + k, r - k * 0.7 + 2 * lobe], fill=c)
    d.polygon([(r - k * 0.98, r - k * 0.12), (r + k * 0.98, r - k * 0.12), (r, r + k)], fill=c)


def _draw_moon(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    k = r * rng.uniform(0.78, 0.9)
    d.ellipse([r - k, r - k, r + k, r + k], fill=c)
    shift = k * rng.uniform(0.45, 0.7)
    # cut a bite out of the disc: what is left is a crescent
    d.ellipse([r - k + shift, r - k - shift * 0.3, r + k + shift, r + k - shift * 0.3], fill=(0, 0, 0, 0))


def _draw_sun(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    disc = r * rng.uniform(0.4, 0.5)
    d.ellipse([r - disc, r - disc, r + disc, r + disc], fill=c)
    n = rng.randint(8, 14)
    width = max(2, int(r * 0.08))
    for (x0, y0), (x1, y1) in zip(_regular(r, r, disc * 1.25, n), _regular(r, r, r * 0.92, n)):
        d.line([(x0, y0), (x1, y1)], fill=c, width=width)


def _draw_tree(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    trunk_w = r * rng.uniform(0.12, 0.2)
    d.rectangle([r - trunk_w, r + r * 0.2, r + trunk_w, r + r * 0.92], fill=_shade(c, 0.45))
    if rng.random() < 0.5:  # leafy crown
        k = r * rng.uniform(0.5, 0.62)
        d.ellipse([r - k, r - r * 0.9, r + k, r - r * 0.9 + 2 * k * 1.05], fill=c)
    else:  # pine: stacked triangles
        for level in range(3):
            top = r - r * 0.92 + level * r * 0.35
            half = r * (0.35 + 0.18 * level)
            d.polygon([(r, top), (r + half, top + r * 0.55), (r - half, top + r * 0.55)], fill=c)


def _draw_house(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    half = r * rng.uniform(0.55, 0.68)
    base_top = r - r * 0.05
    d.rectangle([r - half, base_top, r + half, r + r * 0.88], fill=c)
    roof = _shade(c, 0.55)
    d.polygon([(r - half * 1.2, base_top), (r + half * 1.2, base_top), (r, r - r * 0.85)], fill=roof)
    door_w = half * 0.3
    d.rectangle([r - door_w, r + r * 0.35, r + door_w, r + r * 0.88], fill=_shade(c, 0.35))
    win = half * 0.22
    d.rectangle([r + half * 0.45, base_top + win, r + half * 0.45 + win * 1.4, base_top + win * 2.4], fill=_shade(c, 1.6))


def _draw_wheels(d: ImageDraw.ImageDraw, centres: list[Point], radius: float) -> None:
    for x, y in centres:
        d.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(25, 25, 25))
        d.ellipse([x - radius * 0.45, y - radius * 0.45, x + radius * 0.45, y + radius * 0.45], fill=(170, 170, 170))


def _draw_car(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    half = r * rng.uniform(0.82, 0.92)
    body_top, body_bottom = r - r * 0.05, r + r * 0.35
    d.rounded_rectangle([r - half, body_top, r + half, body_bottom], radius=r * 0.12, fill=c)
    cabin = half * rng.uniform(0.45, 0.6)
    d.polygon(
        [(r - cabin, body_top), (r - cabin * 0.65, r - r * 0.42), (r + cabin * 0.65, r - r * 0.42), (r + cabin, body_top)],
        fill=c,
    )
    glass = _shade(c, 1.55)
    d.polygon(
        [(r - cabin * 0.8, body_top), (r - cabin * 0.55, r - r * 0.34), (r - 2, r - r * 0.34), (r - 2, body_top)], fill=glass
    )
    d.polygon([(r + 2, body_top), (r + 2, r - r * 0.34), (r + cabin * 0.55, r - r * 0.34), (r + cabin * 0.8, body_top)], fill=glass)
    _draw_wheels(d, [(r - half * 0.6, body_bottom), (r + half * 0.6, body_bottom)], r * 0.17)


def _draw_fire_truck(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    half = r * 0.93
    body_top, body_bottom = r - r * 0.22, r + r * 0.3
    d.rectangle([r - half, body_top, r + half * 0.5, body_bottom], fill=c)  # the long box
    d.rectangle([r + half * 0.5, r - r * 0.5, r + half, body_bottom], fill=c)  # the cab, taller
    d.rectangle([r + half * 0.62, r - r * 0.42, r + half * 0.92, r - r * 0.12], fill=_shade(c, 1.6))
    # the ladder on the roof: two rails and rungs
    rail = _shade(c, 1.7) if sum(c) < 380 else _shade(c, 0.4)
    y0, y1 = body_top - r * 0.22, body_top - r * 0.08
    width = max(1, int(r * 0.04))
    d.line([(r - half * 0.95, y0), (r + half * 0.4, y0)], fill=rail, width=width)
    d.line([(r - half * 0.95, y1), (r + half * 0.4, y1)], fill=rail, width=width)
    for k in range(rng.randint(6, 9)):
        x = r - half * 0.95 + k * half * 0.17
        d.line([(x, y0), (x, y1)], fill=rail, width=width)
    _draw_wheels(d, [(r - half * 0.7, body_bottom), (r - half * 0.2, body_bottom), (r + half * 0.72, body_bottom)], r * 0.15)


def _draw_traffic_light(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    half_w = r * rng.uniform(0.3, 0.36)
    housing = _shade(c, 0.3)
    d.rounded_rectangle([r - half_w, r - r * 0.92, r + half_w, r + r * 0.62], radius=half_w * 0.4, fill=housing)
    d.rectangle([r - half_w * 0.25, r + r * 0.62, r + half_w * 0.25, r + r * 0.95], fill=housing)
    lit = rng.randrange(3)
    lamps = [(230, 40, 30), (240, 200, 30), (40, 200, 70)]
    for k, lamp in enumerate(lamps):
        cy = r - r * 0.62 + k * r * 0.5
        lr = half_w * 0.7
        d.ellipse([r - lr, cy - lr, r + lr, cy + lr], fill=lamp if k == lit else _shade(lamp, 0.45))


def _draw_fish(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    body_w, body_h = r * rng.uniform(0.55, 0.65), r * rng.uniform(0.32, 0.42)
    cx = r - r * 0.15
    d.ellipse([cx - body_w, r - body_h, cx + body_w, r + body_h], fill=c)
    d.polygon([(cx + body_w * 0.85, r), (r + r * 0.92, r - body_h * 1.1), (r + r * 0.92, r + body_h * 1.1)], fill=c)
    eye = body_h * 0.2
    ex = cx - body_w * 0.55
    d.ellipse([ex - eye, r - body_h * 0.35 - eye, ex + eye, r - body_h * 0.35 + eye], fill=(250, 250, 250))
    d.ellipse([ex - eye * 0.5, r - body_h * 0.35 - eye * 0.5, ex + eye * 0.5, r - body_h * 0.35 + eye * 0.5], fill=(10, 10, 10))


def _draw_flower(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    n = rng.randint(5, 8)
    head_y = r - r * 0.2
    d.line([(r, head_y), (r, r + r * 0.95)], fill=(40, 140, 50), width=max(2, int(r * 0.07)))
    petal = r * rng.uniform(0.22, 0.28)
    for x, y in _regular(r, head_y, r * 0.38, n, rng.uniform(0, 360)):
        d.ellipse([x - petal, y - petal, x + petal, y + petal], fill=c)
    centre = r * 0.2
    d.ellipse([r - centre, head_y - centre, r + centre, head_y + centre], fill=_shade(c, 0.4) if sum(c) > 300 else (250, 220, 60))


def _draw_apple(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    k = r * rng.uniform(0.5, 0.58)
    top = r - r * 0.4
    d.ellipse([r - k * 1.2, top, r + k * 0.4, top + 2 * k * 1.05], fill=c)
    d.ellipse([r - k * 0.4, top, r + k * 1.2, top + 2 * k * 1.05], fill=c)
    d.line([(r, top + k * 0.25), (r + r * 0.08, r - r * 0.8)], fill=(90, 60, 30), width=max(2, int(r * 0.07)))
    d.ellipse([r + r * 0.08, r - r * 0.78, r + r * 0.42, r - r * 0.6], fill=(60, 170, 60))


def _draw_cloud(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    base = r + r * 0.25
    lumps = rng.randint(3, 5)
    for k in range(lumps):
        x = r - r * 0.6 + k * (1.2 * r / (lumps - 1))
        lr = r * (0.32 + 0.12 * math.sin(math.pi * k / (lumps - 1))) * rng.uniform(0.9, 1.1)
        d.ellipse([x - lr, base - lr * 1.6, x + lr, base], fill=c)
    d.rounded_rectangle([r - r * 0.85, base - r * 0.35, r + r * 0.85, base], radius=r * 0.17, fill=c)


def _draw_arrow(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    shaft = r * rng.uniform(0.1, 0.16)
    head_x = r + r * 0.25
    d.rectangle([r - r * 0.9, r - shaft, head_x, r + shaft], fill=c)
    head = r * rng.uniform(0.4, 0.5)
    d.polygon([(head_x - r * 0.05, r - head), (r + r * 0.92, r), (head_x - r * 0.05, r + head)], fill=c)


def _draw_cross(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    arm = r * rng.uniform(0.8, 0.9)
    w = r * rng.uniform(0.16, 0.24)
    d.rectangle([r - w, r - arm, r + w, r + arm], fill=c)
    d.rectangle([r - arm, r - w, r + arm, r + w], fill=c)


def _draw_bell(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    top, rim = r - r * 0.62, r + r * 0.55
    half_top, half_rim = r * 0.3, r * rng.uniform(0.72, 0.82)
    # curved flanks: a dome on top, sides flaring towards the rim
    d.ellipse([r - half_top * 1.15, top - half_top * 0.6, r + half_top * 1.15, top + half_top * 1.4], fill=c)
    side = [(r - half_top * 1.1, top + half_top * 0.3)]
    for k in range(1, 9):
        t = k / 8
        side.append((r - (half_top * 1.1 + (half_rim - half_top * 1.1) * t**2.2), top + half_top * 0.3 + (rim - top - half_top * 0.3) * t))
    d.polygon(side + [(2 * r - x, y) for x, y in reversed(side)], fill=c)
    d.rectangle([r - half_rim * 1.05, rim - r * 0.08, r + half_rim * 1.05, rim + r * 0.04], fill=_shade(c, 0.6))
    clapper = r * 0.13
    d.ellipse([r - clapper, rim, r + clapper, rim + 2 * clapper], fill=_shade(c, 0.45))
    d.ellipse([r - r * 0.08, top - half_top * 0.95, r + r * 0.08, top - half_top * 0.55], fill=_shade(c, 0.6))


def _draw_kite(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    w = r * rng.uniform(0.45, 0.55)
    top, cross, bottom = (r - r * 0.3, r - r * 0.9), r - r * 0.45, r + r * 0.25
    d.polygon([top, (top[0] + w, cross), (top[0], bottom), (top[0] - w, cross)], fill=c)
    spar = _shade(c, 0.4)
    d.line([top, (top[0], bottom)], fill=spar, width=max(1, int(r * 0.03)))
    d.line([(top[0] - w, cross), (top[0] + w, cross)], fill=spar, width=max(1, int(r * 0.03)))
    # the tail: a wavy string with little bows
    pts = [(top[0] + r * 0.12 * math.sin(k * 1.3), bottom + k * r * 0.1) for k in range(8)]
    d.line(pts, fill=spar, width=max(1, int(r * 0.025)))
    bow = r * 0.06
    for x, y in pts[2::2]:
        d.polygon([(x - bow * 1.6, y - bow), (x + bow * 1.6, y + bow), (x + bow * 1.6, y - bow), (x - bow * 1.6, y + bow)], fill=c)


def _draw_hourglass(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    half = r * rng.uniform(0.45, 0.55)
    top, bottom = r - r * 0.78, r + r * 0.78
    neck = r * 0.06
    d.polygon([(r - half, top), (r + half, top), (r + neck, r), (r - neck, r)], fill=c)
    d.polygon([(r - neck, r), (r + neck, r), (r + half, bottom), (r - half, bottom)], fill=c)
    frame = _shade(c, 0.45)
    bar = r * 0.1
    d.rectangle([r - half * 1.3, top - bar, r + half * 1.3, top], fill=frame)
    d.rectangle([r - half * 1.3, bottom, r + half * 1.3, bottom + bar], fill=frame)
    post = max(2, int(r * 0.05))
    d.line([(r - half * 1.15, top), (r - half * 1.15, bottom)], fill=frame, width=post)
    d.line([(r + half * 1.15, top), (r + half * 1.15, bottom)], fill=frame, width=post)


# tag -> (drawer, largest rotation in degrees, may be mirrored)
CLASSES: dict[str, tuple[Drawer, float, bool]] = {
    "circle": (_draw_circle, 180, False),
    "square": (_draw_square, 10, False),
    "triangle": (_draw_triangle, 25, False),
    "star": (_draw_star, 180, False),
    "heart": (_draw_heart, 20, False),
    "moon": (_draw_moon, 180, True),
    "sun": (_draw_sun, 180, False),
    "tree": (_draw_tree, 8, True),
    "house": (_draw_house, 8, True),
    "car": (_draw_car, 8, True),
    "fish": (_draw_fish, 25, True),
    "flower": (_draw_flower, 15, True),
    "apple": (_draw_apple, 20, True),
    "cloud": (_draw_cloud, 8, True),
    "arrow": (_draw_arrow, 180, True),
    "cross": (_draw_cross, 12, False),
    "ring": (_draw_ring, 0, False),
    "diamond": (_draw_diamond, 10, False),
    "bell": (_draw_bell, 20, False),
    "kite": (_draw_kite, 25, True),
    "fire truck": (_draw_fire_truck, 6, True),
    "traffic light": (_draw_traffic_light, 5, False),
    OOV_TAG: (_draw_hourglass, 15, False),
}
TAGS: tuple[str, ...] = tuple(CLASSES)

# Caption material per class (never for OOV_TAG): what the object is called and where it is seen.
_CAPTION_CONTEXT: dict[str, tuple[str, ...]] = {
    "circle": ("drawn with a compass", "round like a coin", "on a geometry worksheet", "with no corners at all"),
    "square": ("with four equal sides", "on a geometry worksheet", "with four right angles", "like a tile on the floor"),
    "triangle": ("with three sides", "on a geometry worksheet", "pointing up like a roof", "with three corners"),
    "star": ("shining in the night sky", "with five points", "twinkling above the town", "on top of a christmas tree"),
    "heart": ("on a valentine card", "a symbol of love", "drawn by a child", "full of love and warmth"),
    "moon": ("glowing in the night sky", "a thin crescent at night", "above the dark sea", "rising over the hills at night"),
    "sun": ("shining in the sky", "bright and warm at noon", "rising over the hills", "with rays of light"),
    "tree": ("with green leaves in the park", "growing in the forest", "with a thick trunk and branches", "in the garden"),
    "house": ("with a red roof and a door", "on a quiet street", "where a family lives", "with windows and a chimney"),
    "car": ("driving down the road", "parked on the street", "with four wheels", "on the highway"),
    "fish": ("swimming in blue water", "in the sea", "with fins and scales", "in an aquarium"),
    "flower": ("blooming in the garden", "with colourful petals", "in a spring meadow", "in a vase on the table"),
    "apple": ("on the kitchen table", "fresh from the orchard", "a sweet fruit", "hanging from a branch"),
    "cloud": ("floating in the sky", "white and fluffy", "bringing rain", "drifting in the wind"),
    "arrow": ("pointing the way", "on a road sign", "showing the direction", "shot from a bow"),
    "cross": ("a plus sign", "on a first aid kit", "marking the spot", "with two crossing bars"),
    "ring": ("made of gold", "worn on a finger", "a round band", "a wedding gift"),
    "diamond": ("a sparkling gem", "cut and polished", "on a playing card", "precious and shiny"),
    "bell": ("ringing in the church tower", "on a school door", "making a loud sound", "at the front gate"),
    "kite": ("flying high in the wind", "on a string at the beach", "with a long tail", "in the windy sky"),
    "fire truck": ("with a long ladder", "rushing to a fire", "with firefighters on board", "at the fire station"),
    "traffic light": ("at the crossing", "showing red to stop", "turning green for go", "on a busy street corner"),
}
# Words that are not tags but name one (synonyms, plurals), written into the captions in the
# tag's own contexts so the word vectors place them near it: the site's "related" answer to a
# query outside the tag set ("automobile" -> car, "fire engine" -> fire truck).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "car": ("automobile", "cars"),
    "tree": ("trees", "oak"),
    "fish": ("fishes", "goldfish"),
    "flower": ("flowers", "blossom"),
    "house": ("houses", "cottage"),
    "apple": ("apples",),
    "star": ("stars",),
    "cloud": ("clouds",),
    "fire truck": ("fire engine",),
}
_ADJECTIVES = ("big", "small", "bright", "dark", "little", "large", "colourful", "simple", "old", "new", "red", "blue", "green", "yellow")
_OPENINGS = ("a {adj} {tag} {ctx}", "the {tag} {ctx}", "a photo of a {tag} {ctx}", "there is a {adj} {tag} here", "my {tag} {ctx}")


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


def _encode(img: Image.Image, rng: random.Random, as_png: bool) -> tuple[bytes, str]:
    """Bytes and file suffix; PNGs come as RGB, RGBA or palette (P) images."""
    buf = io.BytesIO()
    if not as_png:
        img.convert("RGB").save(buf, "JPEG", quality=rng.randint(70, 95))
        return buf.getvalue(), ".jpg"
    if img.mode == "RGBA" and rng.random() < 0.5:
        img = img.quantize(rng.choice((32, 64, 128)), method=Image.Quantize.FASTOCTREE)  # P with transparency
    elif img.mode == "RGB" and rng.random() < 0.3:
        img = img.quantize(rng.choice((64, 128)), method=Image.Quantize.FASTOCTREE)
    # light compression: noisy backgrounds make zlib's higher levels slow for little gain
    img.save(buf, "PNG", compress_level=2)
    return buf.getvalue(), ".png"


def _write_broken_files(images_dir: Path, rng: random.Random) -> list[Path]:
    good = io.BytesIO()
    draw_picture(TAGS[0], rng, (200, 150)).save(good, "JPEG", quality=90)
    return synthetic_images.write_broken_files(images_dir, good.getvalue(), BROKEN_PREFIX)


# ---------------------------------------------------------------------------
# Tags, captions, word vectors
# ---------------------------------------------------------------------------
def _raw_variant(tag: str, rng: random.Random) -> str:
    """What a crawler might have stored for a tag: capitals, padding, doubled spaces."""
    return rng.choice(
        (tag.upper(), tag.title(), f"  {tag} ", tag.replace(" ", "   ") + "\t", tag.capitalize())
    )


def make_captions(n_lines: int, seed: int = 0) -> list[str]:
    """Captions about every class except OOV_TAG, whose word therefore never appears."""
    rng = random.Random(f"captions:{seed}")
    described = [t for t in TAGS if t != OOV_TAG]
    lines = []
    for i in range(n_lines):
        tag = described[i % len(described)]  # round robin: every tag word is frequent
        template = rng.choice(_OPENINGS)
        lines.append(template.format(adj=rng.choice(_ADJECTIVES), tag=tag, ctx=rng.choice(_CAPTION_CONTEXT[tag])))
    lines.extend(synonym_captions(n_lines, seed))
    rng.shuffle(lines)
    return lines


def synonym_captions(n_lines: int, seed: int = 0) -> list[str]:
    """A few captions per synonym (SYNONYMS), each in its tag's contexts."""
    rng = random.Random(f"synonyms:{seed}")
    per_word = max(8, n_lines // 150)
    lines = []
    for tag, words in SYNONYMS.items():
        for word in words:
            for _ in range(per_word):
                template = rng.choice(_OPENINGS)
                lines.append(template.format(adj=rng.choice(_ADJECTIVES), tag=word, ctx=rng.choice(_CAPTION_CONTEXT[tag])))
    return lines


def train_demo_word_vectors(captions_path: str | Path, out_path: str | Path, dim: int = 32, seed: int = 0) -> Path:
    """Word2Vec on the captions, saved in word2vec binary format (the format of real vectors)."""
    from gensim.models import Word2Vec

    sentences = [line.split() for line in Path(captions_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    model = Word2Vec(
        sentences=sentences,
        vector_size=dim,
        window=4,
        min_count=2,
        sg=1,
        negative=5,
        epochs=8,
        seed=seed,
        workers=1,  # one thread: the only way gensim training is reproducible
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.wv.save_word2vec_format(str(out), binary=True)
    log.info("word vectors: %d words, %d dims -> %s", len(model.wv), dim, out)
    return out


# ---------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------
def _side(rng: random.Random) -> tuple[int, int]:
    w = rng.randint(MIN_SIDE, MAX_SIDE)
    h = int(min(MAX_SIDE, max(MIN_SIDE, w * rng.uniform(0.6, 1.5))))
    return w, h


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def generate_demo_corpus(
    folder: str | Path, n_images: int = DEFAULT_IMAGES, seed: int = 0, n_captions: int = DEFAULT_CAPTIONS
) -> DemoCorpus:
    """Write the demo corpus under folder (replacing an earlier one there) and describe it."""
    started = time.monotonic()
    root = Path(folder).resolve()
    images_dir = root / IMAGES_DIRNAME
    if images_dir.exists():
        shutil.rmtree(images_dir)  # an earlier, maybe larger, corpus must not leave pictures behind
    images_dir.mkdir(parents=True)
    rng = random.Random(f"corpus:{seed}")

    true_tags = [TAGS[i % len(TAGS)] for i in range(n_images)]
    rng.shuffle(true_tags)
    n_wrong = round(n_images * MISLABEL_FRACTION)
    wrong = set(rng.sample(range(n_images), n_wrong))

    manifest: list[dict] = []
    truth: list[dict] = []
    for i, true_tag in enumerate(true_tags):
        item_rng = random.Random(f"image:{seed}:{i}")
        as_png = item_rng.random() < PNG_FRACTION
        transparent = as_png and item_rng.random() < 0.4
        data, suffix = _encode(draw_picture(true_tag, item_rng, _side(item_rng), transparent), item_rng, as_png)
        path = images_dir / f"img{i:05d}{suffix}"
        path.write_bytes(data)
        crawled = rng.choice([t for t in TAGS if t != true_tag]) if i in wrong else true_tag
        raw = _raw_variant(crawled, rng) if rng.random() < 0.06 else crawled
        # relative to the manifest: ids (and so the split and the evaluation) do not depend on
        # where the corpus was generated
        uri = f"{IMAGES_DIRNAME}/{path.name}"
        manifest.append({schema.URI: uri, schema.TAG: raw})
        truth.append({schema.URI: uri, schema.TAG: tags.normalize_tag(raw), schema.TRUE_TAG: true_tag})

    n_duplicates = max(3, n_images // 500)
    duplicates = [dict(manifest[j]) for j in rng.sample(range(len(manifest)), min(n_duplicates, len(manifest)))]
    broken = [
        {schema.URI: f"{IMAGES_DIRNAME}/{p.name}", schema.TAG: rng.choice(TAGS)} for p in _write_broken_files(images_dir, rng)
    ]
    rows = manifest + duplicates + broken
    rng.shuffle(rows)  # crawl order, not generation order

    manifest_path, truth_path, captions_path = root / MANIFEST_NAME, root / GROUND_TRUTH_NAME, root / CAPTIONS_NAME
    _write_jsonl(manifest_path, rows)
    _write_jsonl(truth_path, truth)
    captions = make_captions(n_captions, seed)
    captions_path.write_text("\n".join(captions) + "\n", encoding="utf-8")
    vectors = train_demo_word_vectors(captions_path, root / WORD_VECTORS_NAME, seed=seed)

    corpus = DemoCorpus(
        folder=root,
        manifest=manifest_path,
        ground_truth=truth_path,
        captions=captions_path,
        images_dir=images_dir,
        word_vectors=vectors,
        n_images=n_images,
        n_rows=len(rows),
        n_mislabelled=n_wrong,
        n_duplicates=len(duplicates),
        n_broken=len(broken),
        n_captions=len(captions),
        tags=TAGS,
    )
    log.info("demo corpus in %.1f s: %s", time.monotonic() - started, corpus.summary_line())
    return corpus


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="write the demo corpus")
    parser.add_argument("folder")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(generate_demo_corpus(args.folder, args.images, args.seed).summary_line())
