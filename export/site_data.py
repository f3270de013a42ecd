"""The static site's data format: what `imgsearch rank` publishes and what site/js reads.

Layout under OUT/site (paths below are relative to the site root):

    index.html, css/, js/          the front end, copied from the repository's site/
    data/manifest.json             written LAST: schema version, counts, model info, tag shards
    data/tags/<contenthash>.json   a contiguous range of the sorted tag list
    data/rank/<kk>/<key>-<PPPP>.json   one page of one tag's ranking; key = tag_key(tag)
    thumbs/<ii>/<image_id>.jpg     thumbnails (absent with --no-thumbnails)
    views/<ii>/<image_id>.jpg      the viewer's larger renditions, made with the thumbnails

The site fetches the manifest, then the one tag shard whose range holds the query, then the one
ranking page it shows: three data files for the first results, whatever the collection size.

Tags are sorted by UTF-16 code units, which is how JavaScript compares strings, so the site's
binary search over shard boundaries agrees with the order written here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from export import score_labels
from model import schema, scoring
from model.tags import tag_key

SITE_SCHEMA_VERSION = 1
DATA_DIR = "data"
MANIFEST_PATH = "data/manifest.json"
PAGE_SIZE = 60  # divisible by 2, 3, 4, 5 and 6 grid columns
TAGS_PER_SHARD = 512
CONTENT_HASH_CHARS = 12

RANKED_BY_MATCHER = "matcher"
RANKED_BY_INDEX = "index"  # nothing scored the tag: its images keep index order, scores are null
# every `ranked_by` of a scored tag: the rankers of model/scoring.py and their fallbacks
RANKED_BY_SCORES = tuple(scoring.explanations())

# The manifest is the pointer to the live version: caches must check it every time. Everything
# else is named by content or by version, so it may be cached for long.
MANIFEST_CACHE_CONTROL = "no-cache, max-age=0"
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"
# Browsers refuse ES modules served with another type, and a bucket guesses application/octet-stream.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}


def content_type(path: str) -> str:
    suffix = path[path.rfind(".") :].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return CONTENT_TYPES.get(suffix, "application/octet-stream")


# keys of one ranking item
ITEM_RANK = "rank"
ITEM_IMAGE_ID = "image_id"
ITEM_SCORE = "score"
ITEM_THUMB = "thumb"
ITEM_VIEW = "view"  # the viewer's larger rendition (views/…), or null where there is no thumbnail of ours
ITEM_URI = "uri"


def js_sort_key(text: str) -> bytes:
    """Sort key that orders strings as JavaScript's `<` does (UTF-16 code units)."""
    return text.encode("utf-16-be")


VERSIONS_DIR = f"{DATA_DIR}/v"  # data/v/<version>/: one publish's tag shards, ranking pages and report


def version_root(version: str) -> str:
    """Where one publish's data lives; the manifest (the pointer) names it as `data`."""
    return f"{VERSIONS_DIR}/{version}"


def ranking_page_path(key: str, page: int, data_root: str = DATA_DIR) -> str:
    return f"{data_root}/rank/{key[:2]}/{key}-{page:04d}.json"


def thumbnail_path(image_id: str) -> str:
    return f"thumbs/{image_id[:2]}/{image_id}.jpg"


def view_path(image_id: str) -> str:
    return f"views/{image_id[:2]}/{image_id}.jpg"


def page_count(total: int, page_size: int = PAGE_SIZE) -> int:
    return max(1, -(-total // page_size))


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as published (no whitespace: every byte is fetched by the site)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def ranking_pages(
    tag: str,
    items: Sequence[dict[str, Any]],
    *,
    ranked_by: str,
    page_size: int = PAGE_SIZE,
    data_root: str = DATA_DIR,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(relative path, page object) for each page of one tag's ranking.

    `items` are already in rank order, each with the ITEM_* keys (score None for oov tags).
    """
    key = tag_key(tag)
    pages = page_count(len(items), page_size)
    for page in range(pages):
        chunk = list(items[page * page_size : (page + 1) * page_size])
        yield ranking_page_path(key, page, data_root), {
            "v": SITE_SCHEMA_VERSION,
            "tag": tag,
            "page": page,
            "pages": pages,
            "total": len(items),
            "page_size": page_size,
            "ranked_by": ranked_by,
            "items": chunk,
        }


def tag_shards(
    tag_entries: Iterable[tuple[str, int, int]],
    *,
    per_shard: int = TAGS_PER_SHARD,
    data_root: str = DATA_DIR,
) -> tuple[list[dict[str, Any]], list[tuple[str, bytes]]]:
    """Split (tag, image count, page count) entries into sorted, content-named shards.

    Returns the shard index for the manifest ([{"first", "last", "file", "count"}], in order)
    and the (relative path, encoded bytes) of each shard file. Each shard holds
    {"v", "tags": [[tag, image_count, key, pages], ...]} sorted like the index.
    """
    entries = sorted(tag_entries, key=lambda e: js_sort_key(e[0]))
    index: list[dict[str, Any]] = []
    files: list[tuple[str, bytes]] = []
    for start in range(0, len(entries), per_shard):
        chunk = entries[start : start + per_shard]
        body = encode_json({"v": SITE_SCHEMA_VERSION, "tags": [[t, c, tag_key(t), p] for t, c, p in chunk]})
        path = f"{data_root}/tags/{hashlib.sha256(body).hexdigest()[:CONTENT_HASH_CHARS]}.json"
        files.append((path, body))
        index.append({"first": chunk[0][0], "last": chunk[-1][0], "file": path, "count": len(chunk)})
    return index, files


def build_manifest(
    *,
    shard_index: list[dict[str, Any]],
    images: int,
    tags: int,
    ranked_images: int,
    oov_tags: int,
    model: dict[str, Any],
    thumbnails: bool,
    page_size: int = PAGE_SIZE,
    generated_at: str,
    extra_counts: dict[str, int] | None = None,
    report: str | None = None,
    data_root: str = DATA_DIR,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest object; `build` changes whenever any published content does (cache key).

    `extra` adds top-level objects (export/discovery.py: home, related, similar, probably).

    `extra_counts` (e.g. {"failures": n}) are added to "counts" after the four standard ones;
    `report`, the evaluation page's path relative to the site root, is linked from the header.
    """
    body = {
        "v": SITE_SCHEMA_VERSION,
        "generated_at": generated_at,
        "counts": {
            "images": images,
            "tags": tags,
            "ranked_images": ranked_images,
            "oov_tags": oov_tags,
            **(extra_counts or {}),
        },
        "model": model,
        "page_size": page_size,
        "thumbnails": thumbnails,
        "tag_shards": shard_index,
        "data": data_root,  # where this publish's ranking pages are: data/v/<version>
        "score_labels": score_labels.LABELS,  # a tile's words for its score (export/score_labels.py)
        "ranked_by": scoring.explanations(),  # what ordered a tag, in words (model/scoring.py's registry)
    }
    if report:
        body["report"] = report  # the evaluation page, relative to the site root
    body.update(extra or {})
    body["build"] = hashlib.sha256(encode_json(body)).hexdigest()[:CONTENT_HASH_CHARS]
    return body


def static_site_dir() -> Path:
    """The front end's folder (index.html, css/, js/) that rank copies into OUT/site.

    The repository's site/ in a checkout; the `imgsearch_site` package data in an installed wheel.
    """
    checkout = Path(__file__).resolve().parent.parent / schema.SITE_DIR
    if (checkout / "index.html").is_file():
        return checkout
    import imgsearch_site  # a folder of files without __init__.py: its __path__ says where

    return Path(next(iter(imgsearch_site.__path__)))


def static_site_files() -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of every front-end file to publish; raises if the front end is missing."""
    root = static_site_dir()
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"the site's front end is missing: no index.html in {root}")
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and "__pycache__" not in path.parts:
            yield path.relative_to(root).as_posix(), path.read_bytes()
