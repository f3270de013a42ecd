"""The data budget on a collection of full shape (1.7M images, 100k tags): showing the first
results for a tag, typed or opened by a ?q= link, fetches at most 3 data files and at most
150 KB with the page's own HTML, CSS and JS (thumbnails excluded)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import pytest

from export import site_data
from tests.site.helpers import TILE, open_home, query_url, type_query

MAX_DATA_FILES = 3
MAX_BYTES = 150 * 1024


@dataclass
class Measured:
    how: str
    what: str
    tag: str
    data_files: list[str]
    bytes_by_kind: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.bytes_by_kind.values())


def kind(path: str) -> str | None:
    """What a request counts as: None for thumbnails (excluded from the budget)."""
    if path.startswith("/thumbs/"):
        return None
    if path.startswith(f"/{site_data.DATA_DIR}/"):
        return "data"
    if path.endswith(".js"):
        return "js"
    if path.endswith(".css"):
        return "css"
    return "html"


def measure(open_page, site, how: str, what: str, tag: str) -> Measured:
    page = open_page().page  # a fresh context: nothing cached
    responses = []
    requested = []
    page.on("request", lambda req: requested.append(req.url))
    page.on("response", lambda res: responses.append(res))
    if how == "link":
        page.goto(query_url(site.url, tag))
    else:
        open_home(page, site.url)
        type_query(page, tag)
        page.keyboard.press("Enter")
    page.wait_for_selector(TILE)
    page.wait_for_load_state("networkidle")
    first_rank = page.locator(f"{TILE} .rank").first.text_content()
    assert first_rank == "#1"
    assert page.locator("#results-title").text_content() == f"“{tag}”"

    local = [u for u in requested if u.startswith(site.url)]
    assert len(local) == len(requested), requested  # nothing left the test server
    bytes_by_kind: dict[str, int] = {}
    data_files = []
    for res in responses:
        path = urlparse(res.url).path
        k = kind(path)
        if k is None:
            continue
        assert res.status == 200, res.url
        bytes_by_kind[k] = bytes_by_kind.get(k, 0) + len(res.body())
        if k == "data":
            data_files.append(path)
    return Measured(how, what, tag, data_files, bytes_by_kind)


def test_full_shape_collection(full_site):
    m = full_site.manifest
    assert m["counts"]["images"] == 1_700_000
    assert m["counts"]["tags"] == 100_000
    assert len(m["tag_shards"]) == -(-100_000 // site_data.TAGS_PER_SHARD)
    # the Zipf-like head: the top tag holds far more images than the median one
    counts = full_site.counts
    assert counts[full_site.samples["most images"]] > 1000 * counts[full_site.samples["median"]]


@pytest.mark.parametrize("how", ["link", "typed"])
def test_first_results_fit_the_data_budget(open_page, full_site, capsys, how):
    samples = full_site.samples.items()
    if how == "typed":
        samples = [s for s in samples if s[0] in ("most images", "median", "non-ascii")]
    rows = [measure(open_page, full_site, how, what, tag) for what, tag in samples]

    with capsys.disabled():
        print(
            f"\nsite budget ({how}); manifest {len(site_data.encode_json(full_site.manifest))} B, "
            f"tag shards {min(full_site.shard_bytes)}-{max(full_site.shard_bytes)} B"
        )
        for r in rows:
            parts = " ".join(f"{k}={v}" for k, v in sorted(r.bytes_by_kind.items()))
            print(f"  {r.what:>13} ({full_site.counts[r.tag]:>7} images): "
                  f"{len(r.data_files)} data files, {r.total} B total ({parts})")

    for r in rows:
        assert len(r.data_files) <= MAX_DATA_FILES, (r.what, r.data_files)
        assert r.data_files[0] == f"/{site_data.MANIFEST_PATH}", r.data_files
        assert sum(p.startswith("/data/tags/") for p in r.data_files) == 1, r.data_files
        assert sum(p.startswith("/data/rank/") for p in r.data_files) == 1, r.data_files
        assert r.total <= MAX_BYTES, (r.what, r.bytes_by_kind)
