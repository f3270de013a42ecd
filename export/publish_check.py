"""Read a published site back and say what is wrong with it (an empty list when nothing is).

`check_site(OUT/site, OUT/rankings)` checks what the site's reader relies on: the manifest is
there and well formed and points at a published version, every tag shard it names exists, is content-named, sorted like the
site's binary search expects and agrees with its manifest entry; every ranked tag is listed with
the right image and page counts; every ranking page exists and its items are exactly the
rankings rows of that tag in rank order; no stale data files linger. Uses fsspec (no Beam, no
torch), so it reads local folders and gs:// alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import fsspec
import pyarrow as pa

from export import site_data
from model import schema, storage
from model.tags import TAG_KEY_HEX_CHARS, tag_key

MAX_PROBLEMS = 200
SCORE_TOLERANCE = 5e-5 + 1e-6  # pages round scores to 4 decimals
_HEX_KEY = re.compile(rf"^[0-9a-f]{{{TAG_KEY_HEX_CHARS}}}$")


class _Problems(list):
    """A list of problem strings that stops growing at MAX_PROBLEMS (then says how many more)."""

    dropped = 0

    def add(self, text: str) -> None:
        if len(self) < MAX_PROBLEMS:
            self.append(text)
        else:
            self.dropped += 1


class _Site:
    def __init__(self, site_dir: str):
        self.fs, root = fsspec.core.url_to_fs(site_dir)
        self.root = root.rstrip("/")

    def path(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    def exists(self, relpath: str) -> bool:
        return self.fs.exists(self.path(relpath))

    def read(self, relpath: str) -> bytes:
        return self.fs.cat_file(self.path(relpath))

    def files_under(self, relpath: str) -> set[str]:
        base = self.path(relpath)
        if not self.fs.exists(base):
            return set()
        return {f[len(self.root) + 1 :] for f in self.fs.find(base)}


def _read_json(site: _Site, relpath: str, problems: _Problems) -> tuple[bytes, Any] | None:
    if not site.exists(relpath):
        problems.add(f"missing file: {relpath}")
        return None
    body = site.read(relpath)
    try:
        return body, json.loads(body.decode("utf-8"))
    except ValueError as exn:
        problems.add(f"not JSON: {relpath}: {exn}")
        return None


def _rankings_by_tag(rankings_dir: str) -> dict[str, list[tuple[int, str, str, float | None]]]:
    table: pa.Table = storage.read_parquet_dir(
        rankings_dir, columns=[schema.TAG, schema.RANK, schema.IMAGE_ID, schema.PUBLIC_URI, schema.SCORE]
    )
    table = table.sort_by([(schema.TAG, "ascending"), (schema.RANK, "ascending")])
    by_tag: dict[str, list[tuple[int, str, str, float | None]]] = {}
    for tag, rank, image_id, uri, score in zip(
        *(table[c].to_pylist() for c in (schema.TAG, schema.RANK, schema.IMAGE_ID, schema.PUBLIC_URI, schema.SCORE))
    ):
        by_tag.setdefault(tag, []).append((rank, image_id, uri, score))
    return by_tag


def _check_shards(site: _Site, manifest: dict[str, Any], problems: _Problems) -> dict[str, tuple[int, str, int]]:
    """Tag -> (image count, key, pages) over all shards, checking each shard on the way."""
    listed: dict[str, tuple[int, str, int]] = {}
    previous_last: str | None = None
    for entry in manifest.get("tag_shards", []):
        relpath = entry.get("file", "")
        found = _read_json(site, relpath, problems)
        if found is None:
            continue
        body, shard = found
        digest = hashlib.sha256(body).hexdigest()[: site_data.CONTENT_HASH_CHARS]
        if relpath != f"{manifest.get('data', site_data.DATA_DIR)}/tags/{digest}.json":
            problems.add(f"tag shard {relpath} is not named by its content hash {digest}")
        tags = shard.get("tags", [])
        if not tags:
            problems.add(f"tag shard {relpath} is empty")
            continue
        names = [t[0] for t in tags]
        if len(tags) != entry.get("count"):
            problems.add(f"tag shard {relpath}: manifest count {entry.get('count')} but {len(tags)} tags")
        if names[0] != entry.get("first") or names[-1] != entry.get("last"):
            problems.add(f"tag shard {relpath}: first/last disagree with the manifest")
        keys = [site_data.js_sort_key(n) for n in names]
        if any(a >= b for a, b in zip(keys, keys[1:])):
            problems.add(f"tag shard {relpath} is not strictly sorted")
        if previous_last is not None and site_data.js_sort_key(previous_last) >= keys[0]:
            problems.add(f"tag shard {relpath} overlaps or precedes the shard before it")
        previous_last = names[-1]
        for name, count, key, pages in tags:
            if key != tag_key(name) or not _HEX_KEY.match(key):
                problems.add(f"tag {name!r}: key {key!r} is not tag_key(tag)")
            if name in listed:
                problems.add(f"tag {name!r} listed twice")
            listed[name] = (count, key, pages)
    return listed


def _check_item(site: _Site, tag: str, item: dict[str, Any], row: tuple, thumbnails: bool, problems: _Problems) -> None:
    rank, image_id, uri, score = row
    got = (item.get(site_data.ITEM_RANK), item.get(site_data.ITEM_IMAGE_ID), item.get(site_data.ITEM_URI))
    if got != (rank, image_id, uri):
        problems.add(f"tag {tag!r} rank {rank}: page item {got} but rankings say {(rank, image_id, uri)}")
        return
    page_score = item.get(site_data.ITEM_SCORE)
    if (score is None) != (page_score is None) or (
        score is not None and abs(float(page_score) - float(score)) > SCORE_TOLERANCE
    ):
        problems.add(f"tag {tag!r} rank {rank}: page score {page_score} but rankings say {score}")
    thumb = item.get(site_data.ITEM_THUMB)
    if thumb is None or (thumb == uri and "://" in uri):
        return  # no thumbnails, or this one failed: the page falls back to the public link, or to none
    if "://" not in thumb and (thumb.startswith("/") or thumb.startswith("..")):
        problems.add(f"tag {tag!r} rank {rank}: thumb {thumb!r} is a local path")
        return
    if not thumbnails or thumb != site_data.thumbnail_path(image_id):
        problems.add(f"tag {tag!r} rank {rank}: unexpected thumb {thumb!r}")
    elif not site.exists(thumb):
        problems.add(f"tag {tag!r} rank {rank}: thumbnail {thumb} missing")
    view = item.get(site_data.ITEM_VIEW)
    if view is not None and view != site_data.view_path(image_id):
        problems.add(f"tag {tag!r} rank {rank}: unexpected view {view!r}")
    elif view is not None and not site.exists(view):
        problems.add(f"tag {tag!r} rank {rank}: larger rendition {view} missing")


def _check_tag_pages(
    site: _Site, tag: str, rows: list[tuple], page_size: int, thumbnails: bool, problems: _Problems, data_root: str
) -> set[str]:
    """Check one tag's pages against its rankings rows; returns the page paths it expects."""
    key = tag_key(tag)
    pages = site_data.page_count(len(rows), page_size)
    by_index = all(r[3] is None for r in rows)
    if [r[0] for r in rows] != list(range(1, len(rows) + 1)):
        problems.add(f"tag {tag!r}: rankings ranks are not 1..{len(rows)}")
    expected = {site_data.ranking_page_path(key, p, data_root) for p in range(pages)}
    for page in range(pages):
        relpath = site_data.ranking_page_path(key, page, data_root)
        found = _read_json(site, relpath, problems)
        if found is None:
            continue
        body = found[1]
        header = {k: body.get(k) for k in ("v", "tag", "page", "pages", "total", "page_size", "ranked_by")}
        want = {
            "v": site_data.SITE_SCHEMA_VERSION,
            "tag": tag,
            "page": page,
            "pages": pages,
            "total": len(rows),
            "page_size": page_size,
            # index order exactly when nothing scored the tag; otherwise the ranker's name
            "ranked_by": site_data.RANKED_BY_INDEX if by_index else (
                header["ranked_by"] if header["ranked_by"] in site_data.RANKED_BY_SCORES else "a ranker's name"
            ),
        }
        if header != want:
            problems.add(f"tag {tag!r} page {page}: header {header} but expected {want}")
        chunk = rows[page * page_size : (page + 1) * page_size]
        items = body.get("items", [])
        if len(items) != len(chunk):
            problems.add(f"tag {tag!r} page {page}: {len(items)} items but rankings have {len(chunk)}")
        for item, row in zip(items, chunk):
            _check_item(site, tag, item, row, thumbnails, problems)
    return expected


def check_site(site_dir: str, rankings_dir: str, *, check_thumbnails: bool = True) -> list[str]:
    """Problems found reading the published site back against the rankings; [] when none."""
    problems = _Problems()
    site = _Site(site_dir)
    found = _read_json(site, site_data.MANIFEST_PATH, problems)
    if found is None:
        return list(problems)
    manifest = found[1]
    if manifest.get("v") != site_data.SITE_SCHEMA_VERSION:
        problems.add(f"manifest schema version {manifest.get('v')} != {site_data.SITE_SCHEMA_VERSION}")
    page_size = manifest.get("page_size")
    if not isinstance(page_size, int) or page_size < 1:
        problems.add(f"manifest page_size {page_size!r} is not a positive integer")
        return list(problems)
    thumbnails = bool(manifest.get("thumbnails"))
    data_root = manifest.get("data", site_data.DATA_DIR)
    if not isinstance(data_root, str) or not re.fullmatch(r"data(/v/[0-9A-Za-z._-]+)?", data_root):
        problems.add(f"manifest data root {data_root!r} is not data or data/v/<version>")
        return list(problems)

    try:
        rankings = _rankings_by_tag(rankings_dir)
    except FileNotFoundError as exn:
        problems.add(f"no rankings to compare with: {exn}")
        return list(problems)

    listed = _check_shards(site, manifest, problems)
    for tag in sorted(set(listed) - set(rankings)):
        problems.add(f"tag {tag!r} is listed but has no rankings")
    for tag in sorted(set(rankings) - set(listed)):
        problems.add(f"tag {tag!r} has rankings but is not listed")

    counts = manifest.get("counts", {})
    oov = sum(all(r[3] is None for r in rows) for rows in rankings.values())
    ranked_images = len({r[1] for rows in rankings.values() for r in rows})
    for name, value in (("tags", len(rankings)), ("oov_tags", oov), ("ranked_images", ranked_images)):
        if counts.get(name) != value:
            problems.add(f"manifest counts.{name} is {counts.get(name)} but the rankings give {value}")

    expected_pages: set[str] = set()
    site_check = site if check_thumbnails else _NoThumbnailCheck(site)
    for tag, rows in sorted(rankings.items()):
        if tag in listed:
            count, _key, pages = listed[tag]
            if (count, pages) != (len(rows), site_data.page_count(len(rows), page_size)):
                problems.add(f"tag {tag!r}: listed with {count} images, {pages} pages; rankings have {len(rows)}")
        expected_pages |= _check_tag_pages(site_check, tag, rows, page_size, thumbnails, problems, data_root)

    shard_files = {e.get("file") for e in manifest.get("tag_shards", [])}
    for relpath in sorted(site.files_under(f"{data_root}/rank") - expected_pages):
        problems.add(f"stale ranking page: {relpath}")
    for relpath in sorted(site.files_under(f"{data_root}/tags") - shard_files):
        problems.add(f"stale tag shard: {relpath}")

    result = list(problems)
    if problems.dropped:
        result.append(f"... and {problems.dropped} more problems")
    return result


class _NoThumbnailCheck(_Site):
    """The same site, but thumbnail files count as present (skips one stat per item)."""

    def __init__(self, site: _Site):  # noqa: D107 (shares the wrapped site's fs and root)
        self.fs, self.root = site.fs, site.root
        self._thumbs_prefix = ("thumbs/", "views/")

    def exists(self, relpath: str) -> bool:
        return relpath.startswith(self._thumbs_prefix) or super().exists(relpath)
