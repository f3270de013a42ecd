"""Generated static sites for the browser tests, and a local HTTP server to serve them.

Everything is written with export's own functions (site_data's ranking_pages, tag_shards,
encode_json, static_site_files; publish.site_manifest), so the tests read exactly what `rank`
publishes, without running the pipeline. Two sites:

- build_small_site: a handful of tags, several pages for some, hostile tags and hostile URLs.
- build_full_shape_site: 1.7M images over 100k tags with Zipf-like counts; the tag list and its
  shards at full size, ranking pages only for a sample of tags (enough to measure the data budget).
"""

from __future__ import annotations

import functools
import io
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

from export import publish, site_data
from model.tags import image_id_for, normalize_tag, tag_key

GENERATED_AT = "2026-01-01T00:00:00Z"
MODEL_INFO = {
    "encoder": "efficientnet_lite0",
    "weights": "random",
    "dim": 1280,
    "word_vectors": "/data/vectors/test-w2v.kv",
    "matcher": {"runtime": "onnxruntime"},
}
THUMB_VARIANTS = 12  # distinct thumbnail pictures, reused across image ids

# Hostile inputs the site must treat as data.
XSS_TAG = "<img src=x onerror=alert(1)>"
DOTDOT_TAG = "../x"
CON_TAG = "con"  # what "CON" normalises to
NUL_TAG = "nul.txt"
LONG_TAG = "日本" * 50  # 100 characters, 300 bytes of UTF-8
HOSTILE_URLS_TAG = "hostile urls"
OOV_TAG = "qwertz"
SLOW_TAG = "slow tag"
HOSTILE_SCHEMES = ("javascript:", "data:", "vbscript:", "gs:")
HOSTILE_URL_ITEMS = 8  # the first 8 items of HOSTILE_URLS_TAG; the last 2 are fine


# ---------------------------------------------------------------------------
# Local server
# ---------------------------------------------------------------------------
class _QuietHandler(SimpleHTTPRequestHandler):
    """Static files with optional per-path delays (to provoke stale responses), no log noise."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        for prefix, seconds in list(self.server.delays.items()):  # type: ignore[attr-defined]
            if path.startswith(prefix):
                time.sleep(seconds)
        super().do_GET()

    def handle(self) -> None:
        # the browser aborting a delayed fetch is expected, not an error
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@dataclass
class SiteServer:
    root: Path
    httpd: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def delays(self) -> dict[str, float]:
        """URL path prefix -> seconds to wait before answering; tests set and clear it."""
        return self.httpd.delays  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve(root: Path) -> SiteServer:
    """Serve `root` on 127.0.0.1 at a free port, from a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.delays = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, name="site-server", daemon=True)
    thread.start()
    return SiteServer(root, httpd, thread)


# ---------------------------------------------------------------------------
# Writing a site
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def thumbnail_bytes(variant: int) -> bytes:
    """A small seeded JPEG (about 1 KB): a coloured disc on a coloured square."""
    rng = random.Random(variant)
    img = Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3)))
    ImageDraw.Draw(img).ellipse([12, 12, 52, 52], fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    return buf.getvalue()


def write_file(root: Path, rel: str, body: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def write_front_end(root: Path) -> None:
    for rel, body in site_data.static_site_files():
        write_file(root, rel, body)


@functools.lru_cache(maxsize=None)
def view_bytes(variant: int) -> bytes:
    """The viewer's larger rendition of thumbnail_bytes(variant): the same picture at 384 px."""
    with Image.open(io.BytesIO(thumbnail_bytes(variant))) as small:
        big = small.resize((384, 384))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=70)
    return buf.getvalue()


def write_thumbnail(root: Path, image_id: str) -> str:
    """The thumbnail and the viewer's rendition, as rank makes them together."""
    rel = site_data.thumbnail_path(image_id)
    variant = int(image_id[:4], 16) % THUMB_VARIANTS
    write_file(root, rel, thumbnail_bytes(variant))
    write_file(root, site_data.view_path(image_id), view_bytes(variant))
    return rel


def make_items(tag: str, n: int, *, scored: bool = True, start: int = 0) -> list[dict[str, Any]]:
    """n ranking items in rank order: strictly decreasing scores (or None), own thumbnails."""
    items = []
    for i in range(start, start + n):
        uri = f"https://images.example.org/crawl/{tag_key(tag)[:6]}/{i:07d}.jpg"
        image_id = image_id_for(f"{tag}\x00{uri}")
        items.append(
            {
                site_data.ITEM_RANK: i + 1,
                site_data.ITEM_IMAGE_ID: image_id,
                # from a strong match down to doubtful ones (export/score_labels.py)
                site_data.ITEM_SCORE: round(2.5 - i * 0.031, 4) if scored else None,
                site_data.ITEM_THUMB: site_data.thumbnail_path(image_id),
                site_data.ITEM_VIEW: site_data.view_path(image_id),
                site_data.ITEM_URI: uri,
            }
        )
    return items


def write_ranking(
    root: Path,
    tag: str,
    items: list[dict[str, Any]],
    *,
    ranked_by: str = site_data.RANKED_BY_MATCHER,
    pages: Iterable[int] | None = None,
    thumbs: bool = True,
) -> None:
    """Publish a tag's ranking pages (only `pages` when given) and the thumbnails they show."""
    wanted = None if pages is None else set(pages)
    for number, (rel, page) in enumerate(site_data.ranking_pages(tag, items, ranked_by=ranked_by)):
        if wanted is not None and number not in wanted:
            continue
        write_file(root, rel, site_data.encode_json(page))
        if thumbs:
            for item in page["items"]:
                write_thumbnail(root, item[site_data.ITEM_IMAGE_ID])


def write_index(
    root: Path, entries: list[tuple[str, int, int]], *, per_shard: int, oov_tags: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Tag shards, then the manifest (written last, as rank does). Returns the manifest."""
    shard_index, shard_files = site_data.tag_shards(entries, per_shard=per_shard)
    for rel, body in shard_files:
        write_file(root, rel, body)
    images = sum(count for _, count, _ in entries)
    manifest = publish.site_manifest(
        shard_index=shard_index,
        entries=entries,
        images=images,
        ranked_images=images,
        by_index_tags=oov_tags,
        model=MODEL_INFO,
        thumbnails=True,
        page_size=site_data.PAGE_SIZE,
        failures={},
        report=None,
        data_root=site_data.DATA_DIR,
        extra=extra,
        generated_at=GENERATED_AT,
    )
    write_file(root, site_data.MANIFEST_PATH, site_data.encode_json(manifest))
    return manifest


# ---------------------------------------------------------------------------
# The small site for behaviour tests
# ---------------------------------------------------------------------------
SMALL_COUNTS = {
    "red car": 150,  # three pages: 60 + 60 + 30
    "red": 70,
    "red apple": 12,
    "reddish": 5,
    "car": 40,
    "blue car": 8,
    "cat": 61,
    "dog": 20,
    "tree": 9,
    "apple": 30,
    "kite": 3,  # two edits from "kitten", one from "kiten"
    OOV_TAG: 25,
    SLOW_TAG: 10,
    XSS_TAG: 3,
    DOTDOT_TAG: 2,
    CON_TAG: 2,
    NUL_TAG: 2,
    LONG_TAG: 2,
}
SMALL_PER_SHARD = 8
SMALL_AZ_PER_PAGE = 2  # so that a letter (r: red, red apple, red car, reddish) has pages


@dataclass
class SmallSite:
    server: SiteServer
    manifest: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url


def hostile_url_items(base_url: str) -> list[dict[str, Any]]:
    """Items whose thumb/uri try to smuggle scripts, other hosts or odd schemes into the page."""
    bad = [
        ("javascript:alert(1)", "javascript:alert(1)"),
        ("data:text/html,<script>alert(1)</script>", "data:text/html,<script>alert(2)</script>"),
        ("//evil.example/x.jpg", "//evil.example/"),
        ("/\\evil.example/x.jpg", "vbscript:msgbox(1)"),
        (" JavaScript:alert(1)", "\tjavascript:alert(1)"),
        ("data:image/svg+xml,<svg onload=alert(1)>", "jAvAsCrIpT:alert(1)"),
        # what rank writes when a thumbnail failed: the source's own (local or gs://) uri
        ("/srv/crawl/img00001.jpg", "/srv/crawl/img00001.jpg"),
        ("../../outside.jpg", "gs://bucket/crawl/img00002.jpg"),
    ]
    items = make_items(HOSTILE_URLS_TAG, len(bad) + 2)
    for item, (thumb, uri) in zip(items, bad):
        item[site_data.ITEM_THUMB] = thumb
        item[site_data.ITEM_URI] = uri
    # an absolute http(s) thumbnail is allowed and loads; a relative one resolves against the root
    absolute = items[len(bad)]
    absolute[site_data.ITEM_THUMB] = base_url + site_data.thumbnail_path(absolute[site_data.ITEM_IMAGE_ID])
    return items


def build_small_site(root: Path, base_url: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Write the behaviour-test site under root (served at base_url)."""
    write_front_end(root)
    counts = dict(SMALL_COUNTS)
    for tag, n in SMALL_COUNTS.items():
        assert normalize_tag(tag) == tag, tag
        if tag == OOV_TAG:
            write_ranking(root, tag, make_items(tag, n, scored=False), ranked_by=site_data.RANKED_BY_INDEX)
        else:
            write_ranking(root, tag, make_items(tag, n))
    hostile = hostile_url_items(base_url)
    write_ranking(root, HOSTILE_URLS_TAG, hostile)
    counts[HOSTILE_URLS_TAG] = len(hostile)
    entries = [(tag, n, site_data.page_count(n)) for tag, n in counts.items()]
    extra = write_discovery(root, entries)
    manifest = write_index(root, entries, per_shard=SMALL_PER_SHARD, oov_tags=1, extra=extra)
    return manifest, counts


# ---------------------------------------------------------------------------
# Beyond the rankings (export/discovery.py): home, related words, more like this, copies, strips
# ---------------------------------------------------------------------------
RELATED = {  # a word that is not a tag -> its related tags (show_at 0.7: automobile shows "car")
    "automobile": [["car", 0.91], ["red car", 0.64], ["blue car", 0.6]],
    "kitten": [["cat", 0.62], ["dog", 0.55]],
    "catt": [["dog", 0.52]],  # related to dog, and one edit from cat: one list ranks both
    "crimson": [["red", 0.66], ["reddish", 0.58]],
    "vehicle": [["car", 0.64], ["blue car", 0.6]],
    XSS_TAG + "x": [[XSS_TAG, 0.6]],
}
COPIES_TAG = "apple"  # its first item has two copies folded into it
STRIP_TAG = "dog"  # a one-page tag with a "probably" strip of images crawled as "cat"
STRIP_ITEMS = 5


def _write(root: Path):
    return lambda rel, body: write_file(root, rel, body)


def write_discovery(root: Path, entries: list[tuple[str, int, int]], data_root: str = site_data.DATA_DIR) -> dict[str, Any]:
    """home.json, related-word, more-like-this and "probably" shards, and copies on one item,
    written with export/'s own functions; returns the manifest's extra objects."""
    from export import discovery, hashed_shards, home, probably, related_words, similar

    write = _write(root)
    extra: dict[str, Any] = {}
    extra["home"], _ = home.publish_home(write, lambda rel: (root / rel).read_bytes(), data_root, entries)
    extra[related_words.KIND] = related_words.publish(write, data_root, RELATED, entries=entries, vocab=len(RELATED)).manifest
    extra["az"], _ = home.publish_az(write, data_root, entries, per_page=SMALL_AZ_PER_PAGE)

    # every published item, in a ring of neighbours across tags
    published: dict[str, tuple[str, str]] = {}
    for tag, count, _pages in sorted(entries):
        if tag == HOSTILE_URLS_TAG:
            continue
        for item in make_items(tag, count):
            published[item[site_data.ITEM_IMAGE_ID]] = (tag, item[site_data.ITEM_URI])
    ids = list(published)
    lists = {
        image_id: ([ids[(i + k * 7) % len(ids)] for k in range(1, 16)], np.linspace(0.95, 0.6, 15, dtype=np.float32))
        for i, image_id in enumerate(ids)
    }
    neighbours = similar.Neighbours({k: v[0] for k, v in lists.items()}, {k: v[1] for k, v in lists.items()})

    # copies: the first apple has two, further down its ranking
    apple = make_items(COPIES_TAG, dict((t, c) for t, c, _ in entries)[COPIES_TAG])
    group = [apple[0][site_data.ITEM_IMAGE_ID], apple[5][site_data.ITEM_IMAGE_ID], apple[9][site_data.ITEM_IMAGE_ID]]
    group_of = {image_id: min(group) for image_id in group}
    apple[0]["copies"] = [{k: apple[j][k] for k in ("image_id", "thumb", "uri")} for j in (5, 9)]
    folded = [it for j, it in enumerate(apple) if j not in (5, 9)]
    for rank, item in enumerate(folded, start=1):
        item[site_data.ITEM_RANK] = rank
    write_ranking(root, COPIES_TAG, folded)
    extra["similar"], _ = similar.publish_similar(write, data_root, similar.similar_entries(neighbours, published, group_of))

    cats = make_items("cat", STRIP_ITEMS, start=40)
    strip = probably.Strips(
        {
            STRIP_TAG: [
                {
                    "image_id": it[site_data.ITEM_IMAGE_ID], "tag": "cat", "uri": it[site_data.ITEM_URI],
                    "score": round(1.5 - 0.2 * i, 3), "neighbours": [16 - i, 20], "matcher": round(1.2 - 0.1 * i, 2),
                    "own_score": -1.5,
                }
                for i, it in enumerate(cats)
            ],
            "red car": [
                {"image_id": it[site_data.ITEM_IMAGE_ID], "tag": "car", "uri": it[site_data.ITEM_URI], "score": 0.5,
                 "neighbours": [12, 20], "matcher": -0.2, "own_score": -0.5}  # the matcher a little below typical
                for it in make_items("car", 2, start=30)
            ],
        },
        {},
    )
    extra["probably"], _ = probably.publish_strips(write, data_root, strip)
    discovery.mark_strips(str(root), data_root, {tag: len(items) for tag, items in strip.by_tag.items()})
    assert hashed_shards.fnv1a32("") == hashed_shards.FNV_OFFSET
    return extra


# ---------------------------------------------------------------------------
# The full-shape site for the data budget
# ---------------------------------------------------------------------------
FULL_IMAGES = 1_700_000
FULL_TAGS = 100_000
_SYLLABLES = (
    "ka ri to ne sa mu lo pe di an er in on us el ar bo ch st tr gr pl br fl sh th "
    "qu ve zo ly mi ra tu ge ha wo ba ce fi jo ku ma ni po se ti va "
    "é ü ñ ø"
).split()
_CJK = "猫犬花山川空海車赤青木鳥魚雨雪星"


def tag_names(n: int, seed: int = 7) -> list[str]:
    """n distinct normalised tags of realistic shape: words of 1-4 syllables, some two-word
    tags, a few accented or CJK ones."""
    rng = random.Random(seed)
    names: set[str] = set()
    out: list[str] = []

    def word() -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3, 3, 4))))

    while len(out) < n:
        roll = rng.random()
        if roll < 0.03:
            tag = "".join(rng.choice(_CJK) for _ in range(rng.choice((1, 2, 3))))
        elif roll < 0.3:
            tag = f"{word()} {word()}"
        else:
            tag = word()
        tag = normalize_tag(tag)
        if tag and tag not in names:
            names.add(tag)
            out.append(tag)
    return out


def zipf_counts(tags: int, images: int, exponent: float = 1.0) -> list[int]:
    """Image counts per tag, largest first, Zipf-like, at least 1 each, summing to `images`."""
    weights = [1.0 / (rank + 1) ** exponent for rank in range(tags)]
    scale = (images - tags) / sum(weights)
    counts = [1 + int(w * scale) for w in weights]
    counts[0] += images - sum(counts)
    return counts


@dataclass
class FullShapeSite:
    server: SiteServer
    manifest: dict[str, Any]
    samples: dict[str, str]  # what -> tag, e.g. "most images" -> tag
    counts: dict[str, int]
    shard_bytes: list[int]
    words: dict[str, str] = field(default_factory=dict)  # what -> a query that is not a tag

    @property
    def url(self) -> str:
        return self.server.url


def build_full_shape_site(root: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, int], list[int], dict[str, str]]:
    """The collection at full size: all tag shards, ranking pages for a few sample tags, the
    home page's data, related words for 200,000 words, and more-like-this files for the sample
    tags' first images (at the size and shard count 1.7M images give)."""
    write_front_end(root)
    names = tag_names(FULL_TAGS)
    counts = zipf_counts(FULL_TAGS, FULL_IMAGES)
    by_tag = dict(zip(names, counts))  # names are in random order, so popular tags spread out
    entries = [(t, c, site_data.page_count(c)) for t, c in by_tag.items()]
    extra, words = write_full_shape_discovery(root, names, by_tag, entries)
    manifest = write_index(root, entries, per_shard=site_data.TAGS_PER_SHARD, oov_tags=0, extra=extra)
    mid = sorted(by_tag, key=lambda t: (by_tag[t], t))[FULL_TAGS // 2]
    samples = {
        "most images": names[0],
        "second most": names[1],
        "median": mid,
        "fewest images": names[-1],
        "longest": max(names, key=lambda t: (len(t.encode("utf-8")), t)),
        "non-ascii": next(t for t in names if not t.isascii()),
    }
    for tag in samples.values():
        # realistic page 0 (and page 1 where there is one); the rest of a ranking is never read
        n = min(by_tag[tag], 2 * site_data.PAGE_SIZE)
        items = make_items(tag, n)
        pages = site_data.page_count(by_tag[tag])
        for number, (rel, page) in enumerate(site_data.ranking_pages(tag, items, ranked_by=site_data.RANKED_BY_MATCHER)):
            page["pages"], page["total"] = pages, by_tag[tag]
            write_file(root, rel, site_data.encode_json(page))
            for item in page["items"]:
                write_thumbnail(root, item[site_data.ITEM_IMAGE_ID])
    shard_bytes = [(root / s["file"]).stat().st_size for s in manifest["tag_shards"]]
    write_similar_for(root, manifest, [make_items(tag, 1)[0] for tag in samples.values()], names)
    return manifest, samples, {t: by_tag[t] for t in samples.values()}, shard_bytes, words


FULL_WORDS = 200_000
FULL_RELATED: dict[str, list[list[Any]]] = {}
SIMILAR_ENTRY_BYTES = 560  # a published image's more-like-this record: 12 neighbours, a public link


def write_full_shape_discovery(
    root: Path, names: list[str], by_tag: dict[str, int], entries: list[tuple[str, int, int]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """home.json (the 48 most popular tags, their first pages and thumbnails) and 200,000 words'
    related tags (five each, the largest case)."""
    from export import home, related_words, similar

    write = lambda rel, body: write_file(root, rel, body)  # noqa: E731
    for tag, count, _pages in home.popular_tags(entries):
        items = make_items(tag, min(count, site_data.PAGE_SIZE))
        rel, page = next(iter(site_data.ranking_pages(tag, items, ranked_by=site_data.RANKED_BY_MATCHER)))
        page["pages"], page["total"] = site_data.page_count(count), count
        write_file(root, rel, site_data.encode_json(page))
        write_thumbnail(root, items[0][site_data.ITEM_IMAGE_ID])
    extra: dict[str, Any] = {}
    extra["home"], _ = home.publish_home(write, lambda rel: (root / rel).read_bytes(), site_data.DATA_DIR, entries)
    rng = random.Random(11)
    tags = set(names)
    popular = sorted(names, key=lambda t: -by_tag[t])[:2000]
    FULL_RELATED.clear()
    while len(FULL_RELATED) < FULL_WORDS:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3, 3, 4, 5))))
        if word in tags or word in FULL_RELATED:
            continue
        sims = sorted((round(rng.uniform(0.5, 0.8), 3) for _ in range(5)), reverse=True)
        FULL_RELATED[word] = [[rng.choice(popular), s] for s in sims]
    # a word close enough to show its best tag's results: that tag's first page is published
    # (and no tag one edit away, whose spelling would rank above it)
    shown = next(
        w for w, rel in FULL_RELATED.items()
        if rel[0][1] >= related_words.DEFAULT_SHOW_AT and not any(related_words._one_edit(w, t) for t in names)
    )
    FULL_RELATED[shown][0][0] = popular[0]
    extra[related_words.KIND] = related_words.publish(
        write, site_data.DATA_DIR, FULL_RELATED, entries=entries, vocab=FULL_WORDS
    ).manifest
    extra["az"], _ = home.publish_az(write, site_data.DATA_DIR, entries)
    shards = -(-SIMILAR_ENTRY_BYTES * FULL_IMAGES // similar.SIMILAR_TARGET_BYTES)
    extra["similar"] = {"shards": shards}
    unknown = next(w for w, rel in FULL_RELATED.items() if rel[0][1] < related_words.DEFAULT_SHOW_AT)
    return extra, {"related only": unknown, "results shown": shown}


def write_similar_for(root: Path, manifest: dict[str, Any], items: list[dict[str, Any]], names: list[str]) -> None:
    """The more-like-this files holding these items, each as full as 1.7M images make one."""
    from export import hashed_shards, similar

    shards = manifest["similar"]["shards"]
    per_file = FULL_IMAGES / shards
    rng = random.Random(13)

    def record(uri: str) -> dict[str, Any]:
        return {
            "tag": rng.choice(names),
            "uri": uri,
            "similar": [[f"{rng.getrandbits(64):016x}", rng.choice(names), round(rng.uniform(0.5, 0.98), 3)] for _ in range(similar.SIMILAR_PER_IMAGE)],
        }

    for item in items:
        image_id = item[site_data.ITEM_IMAGE_ID]
        shard = hashed_shards.shard_of(image_id, shards)
        opened = record(item[site_data.ITEM_URI])
        for neighbour in opened["similar"]:
            write_thumbnail(root, neighbour[0])  # the strip the viewer shows
        body = {"v": site_data.SITE_SCHEMA_VERSION, "images": {image_id: opened}}
        # the fullest files: the mean plus four standard deviations of a Poisson count
        while len(body["images"]) < int(per_file + 4 * per_file**0.5):
            body["images"][f"{rng.getrandbits(64):016x}"] = record(f"https://images.example.org/crawl/{rng.getrandbits(32):08x}.jpg")
        write_file(root, hashed_shards.shard_path(site_data.DATA_DIR, similar.SIMILAR_KIND, shard), site_data.encode_json(body))


def start_site(root: Path, build: Callable[[Path, str], Any]) -> tuple[SiteServer, Any]:
    """Start a server on root, then build the site (the builder may need the server's URL)."""
    root.mkdir(parents=True, exist_ok=True)
    server = serve(root)
    return server, build(root, server.url)
