"""The home page's one data file: the collection's popular tags, each with its top image.

`home.json` (under the published version, named by the manifest's `home`) holds the first
POPULAR tags by image count, each as [tag, image count, key, pages, thumb of its first-ranked
image, that image's id]; the page shows them as a grid of thumbnails, names the first of them
in the search box's placeholder, and browses every tag A–Z through the tag shards the manifest
already lists. The manifest plus this file are the home page's data: at 100,000 tags, well
under 150 KB.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from export import site_data
from model.tags import tag_key

POPULAR = 48
HOME_FILE = "home.json"


def home_path(data_root: str) -> str:
    return f"{data_root}/{HOME_FILE}"


def popular_tags(entries: Sequence[tuple[str, int, int]], limit: int = POPULAR) -> list[tuple[str, int, int]]:
    """The `limit` tags with the most images (ties by the site's tag order)."""
    return sorted(entries, key=lambda e: (-e[1], site_data.js_sort_key(e[0])))[:limit]


def build_home(
    entries: Sequence[tuple[str, int, int]],
    read_bytes: Callable[[str], bytes],
    data_root: str,
    limit: int = POPULAR,
) -> dict[str, Any]:
    """The home object; each popular tag's top image comes from its published page 0."""
    popular = []
    for tag, count, pages in popular_tags(entries, limit):
        key = tag_key(tag)
        thumb = image_id = None
        try:
            page = json.loads(read_bytes(site_data.ranking_page_path(key, 0, data_root)))
            first = (page.get("items") or [None])[0] or {}
            thumb, image_id = first.get(site_data.ITEM_THUMB), first.get(site_data.ITEM_IMAGE_ID)
        except (OSError, ValueError):
            pass
        popular.append([tag, count, key, pages, thumb, image_id])
    return {"v": site_data.SITE_SCHEMA_VERSION, "popular": popular}


def publish_home(
    write_bytes: Callable[[str, bytes], None],
    read_bytes: Callable[[str], bytes],
    data_root: str,
    entries: Sequence[tuple[str, int, int]],
) -> tuple[str, dict[str, Any]]:
    """Write home.json; returns (its path for the manifest, report facts)."""
    body = site_data.encode_json(build_home(entries, read_bytes, data_root))
    path = home_path(data_root)
    write_bytes(path, body)
    return path, {"popular": min(POPULAR, len(entries)), "bytes": len(body)}
