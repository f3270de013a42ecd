"""The demo corpus's object classes: one tag each, and how its object is drawn.

A drawer paints one object centred at (r, r) on a transparent square layer of side 2r, varied by
its rng (proportions, details); `drawing.draw_picture` places the layer on a background. The drawn
classes are the keys of CLASSES: two are two words (MULTI_WORD_TAGS) and one (OOV_TAG) never
occurs in the captions, so it is out of vocabulary for the demo word vectors. LOOKALIKE_PAIRS are
the classes that really look alike (related drawers, the same silhouette family); ALL_WRONG_TAG is
a tag without a class of its own, whose pictures all show another class. TAGS is both.
"""

from __future__ import annotations

import math
import random
from typing import Callable

from PIL import ImageDraw

# The one tag whose word the captions never use: out of vocabulary for the demo word vectors.
OOV_TAG = "hourglass"
MULTI_WORD_TAGS = ("fire truck", "traffic light")

Colour = tuple[int, int, int]
Point = tuple[float, float]
# A drawer paints one object centred at (r, r) on a transparent square layer of side 2r.
Drawer = Callable[[ImageDraw.ImageDraw, float, Colour, random.Random], None]


# ---------------------------------------------------------------------------
# Geometry and shading
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


def _centred(r: float, half: float, aspect: float = 1.0) -> list[float]:
    """The box centred on the layer's centre (r, r): half width `half`, half height half * aspect."""
    return [r - half, r - half * aspect, r + half, r + half * aspect]


# ---------------------------------------------------------------------------
# Object drawers: one per class. r is the layer's half side; keep shapes inside 0.95 r.
# ---------------------------------------------------------------------------
def _draw_circle(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    k = r * rng.uniform(0.75, 0.92)
    aspect = rng.uniform(0.9, 1.1)
    d.ellipse(_centred(r, k, aspect), fill=c)


def _draw_ring(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    k = r * rng.uniform(0.75, 0.92)
    d.ellipse(_centred(r, k), outline=c, width=max(2, int(k * rng.uniform(0.18, 0.32))))


def _draw_square(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    k = r * rng.uniform(0.55, 0.68)
    aspect = rng.uniform(0.88, 1.12)
    d.rectangle(_centred(r, k, aspect), fill=c)


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
    d.ellipse(_centred(r, k), fill=c)
    shift = k * rng.uniform(0.45, 0.7)
    # cut a bite out of the disc: what is left is a crescent
    d.ellipse([r - k + shift, r - k - shift * 0.3, r + k + shift, r + k - shift * 0.3], fill=(0, 0, 0, 0))


def _draw_sun(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    disc = r * rng.uniform(0.4, 0.5)
    d.ellipse(_centred(r, disc), fill=c)
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


def _draw_car(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> float:
    """A car seen from the side; its body's half length (the taxi adds to it)."""
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
    return half


def _draw_taxi(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    """The car's look-alike: the same car with a sign on the roof and a checker stripe."""
    half = _draw_car(d, r, c, rng)
    sign = r * rng.uniform(0.12, 0.18)
    d.rectangle([r - sign, r - r * 0.56, r + sign, r - r * 0.42], fill=_shade(c, 1.7) if sum(c) < 380 else _shade(c, 0.35))
    dark, light = _shade(c, 0.25), _shade(c, 1.8)
    cell = r * 0.07
    y = r + r * 0.06
    for k in range(int(1.5 * half / cell)):
        x = r - half * 0.75 + k * cell
        d.rectangle([x, y, x + cell, y + cell], fill=dark if k % 2 else light)


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


def _draw_peach(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    """The apple's look-alike: one round body with a crease instead of two lobes, the same stem and leaf."""
    k = r * rng.uniform(0.62, 0.7)
    top = r - r * 0.4
    d.ellipse([r - k * 1.05, top, r + k * 1.05, top + 2 * k * 0.98], fill=c)
    crease = _shade(c, 0.7)
    d.arc([r - k * 0.55, top + k * 0.1, r + k * 0.25, top + 2 * k * 0.9], start=-80, end=80, fill=crease, width=max(1, int(r * 0.035)))
    d.line([(r, top + k * 0.15), (r + r * 0.05, r - r * 0.62)], fill=(90, 60, 30), width=max(2, int(r * 0.07)))
    d.ellipse([r + r * 0.05, r - r * 0.72, r + r * 0.4, r - r * 0.55], fill=(60, 170, 60))


def _draw_banana(d: ImageDraw.ImageDraw, r: float, c: Colour, rng: random.Random) -> None:
    """The moon's look-alike: a curved band tapering to both ends, a dark tip at one of them."""
    radius = r * rng.uniform(0.8, 0.9)
    thick = radius * rng.uniform(0.36, 0.48)
    cy = r - radius * 0.45
    outer, inner = [], []
    for step in range(17):
        t = step / 16
        angle = math.pi * (0.12 + 0.76 * t)
        w = thick * max(0.08, math.sin(math.pi * t)) ** 0.7
        outer.append((r + radius * math.cos(angle), cy + radius * math.sin(angle)))
        inner.append((r + (radius - w) * math.cos(angle), cy + (radius - w) * math.sin(angle)))
    d.polygon(outer + inner[::-1], fill=c)
    tip = max(2, int(r * 0.06))
    d.line([outer[0], (outer[0][0] + tip * 1.5, outer[0][1] - tip * 1.5)], fill=(80, 55, 25), width=tip)


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
    "peach": (_draw_peach, 20, True),
    "banana": (_draw_banana, 180, True),
    "taxi": (_draw_taxi, 8, True),
}

# Classes that really look alike: the same silhouette family, drawn by related drawers, in the
# same random colours. A wrongly tagged picture of one mostly carries the other's tag.
LOOKALIKE_PAIRS: tuple[tuple[str, str], ...] = (
    ("apple", "peach"),  # two fruits: two lobes or one body with a crease, the same stem and leaf
    ("moon", "banana"),  # two crescents
    ("car", "taxi"),  # two cars: the taxi has a roof sign and a checker stripe
    ("circle", "ring"),  # two round shapes: a disc and a band
    ("star", "sun"),  # points or rays around a centre
    ("diamond", "kite"),  # two rhombi: the kite has spars and a tail
    ("tree", "flower"),  # a crown on a stem
)
LOOKALIKE: dict[str, str] = {a: b for pair in LOOKALIKE_PAIRS for a, b in (pair, pair[::-1])}

# A tag with no class of its own: every picture crawled under it truly shows another class, mostly
# its look-alike (a crawler's page of traffic lights captioned "lantern").
ALL_WRONG_TAG = "lantern"
ALL_WRONG_LOOKS_LIKE = "traffic light"

# Every tag the corpus may carry: the drawn classes and the all-wrong tag.
TAGS: tuple[str, ...] = (*CLASSES, ALL_WRONG_TAG)
