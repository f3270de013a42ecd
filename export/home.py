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
import unicodedata
from typing import Any, Callable, Sequence

from export import site_data
from model.tags import tag_key

POPULAR = 48
HOME_FILE = "home.json"
AZ_DIR = "az"
AZ_PER_PAGE = 512
OTHER_LETTER = "#"  # tags that start with no Latin letter (digits, CJK, symbols)
# letters NFKD does not take apart, folded as a reader of the A–Z list expects
_LETTER_FOLD = {"ø": "o", "æ": "a", "œ": "o", "ß": "s", "đ": "d", "ð": "d", "ł": "l", "þ": "t", "ı": "i"}


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


# ---------------------------------------------------------------------------
# A–Z: every tag grouped, ordered and cut by its folded first letter
# ---------------------------------------------------------------------------
def fold_for_az(tag: str) -> str:
    """The tag without accents, each letter folded ("Ñandú" -> "nandu"): what the A–Z list groups
    and orders by."""
    decomposed = unicodedata.normalize("NFKD", tag.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(_LETTER_FOLD.get(c, c) for c in plain)


def az_letter(tag: str) -> str:
    first = fold_for_az(tag)[:1]
    return first if "a" <= first <= "z" else OTHER_LETTER


def az_path(data_root: str, letter: str, page: int) -> str:
    name = "0" if letter == OTHER_LETTER else letter
    return f"{data_root}/{AZ_DIR}/{name}-{page:04d}.json"


def publish_az(
    write_bytes: Callable[[str, bytes], None],
    data_root: str,
    entries: Sequence[tuple[str, int, int]],
    per_page: int = AZ_PER_PAGE,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the A–Z pages: per letter that has tags, its tags ordered by their folded spelling,
    `per_page` a file ({"v", "letter", "page", "pages", "tags": [[tag, count, key, pages], …]}).

    Returns the manifest's `az` object ({"letters": [[letter, tags, pages], …]}, only letters that
    have tags, a–z then "#") and report facts."""
    by_letter: dict[str, list[tuple[str, int, int]]] = {}
    for entry in entries:
        by_letter.setdefault(az_letter(entry[0]), []).append(entry)
    letters = []
    files = 0
    for letter in sorted(by_letter, key=lambda x: (x == OTHER_LETTER, x)):
        tags = sorted(by_letter[letter], key=lambda e: (fold_for_az(e[0]), site_data.js_sort_key(e[0])))
        pages = site_data.page_count(len(tags), per_page)
        for page in range(pages):
            chunk = tags[page * per_page : (page + 1) * per_page]
            body = {
                "v": site_data.SITE_SCHEMA_VERSION,
                "letter": letter,
                "page": page,
                "pages": pages,
                "tags": [[t, c, tag_key(t), p] for t, c, p in chunk],
            }
            write_bytes(az_path(data_root, letter, page), site_data.encode_json(body))
            files += 1
        letters.append([letter, len(tags), pages])
    return {"letters": letters}, {"letters": len(letters), "files": files}
