"""The data budget on a collection of full shape (1.7M images, 100k tags), for every kind of
query: the home page, a tag's first results (the hottest, the rarest and others, typed or opened
by a ?q= link), a word that is not a tag (its related tags only, or the best related tag's
results shown), and opening the viewer. Each fetches at most 3 data files and at most 150 KB
with the page's own HTML, CSS and JS (thumbnails and the viewer's renditions excluded)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import pytest

from export import related_words, site_data
from tests.site.helpers import TILE, open_home, query_url, type_query

MAX_DATA_FILES = 3
HOME_DATA = f"/{site_data.DATA_DIR}/home.json"
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
    if path.startswith(("/thumbs/", "/views/")):
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
        if k is None or (how == "typed" and path == HOME_DATA):
            # typing starts on the home page: its own file is measured by test_home_page_fits_the_budget
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
        # the tag found in one file: its tag shard when the search box loaded it, else (a link,
        # or Enter before the box fetched a shard) its lookup shard
        assert sum(p.startswith(("/data/tags/", f"/data/{related_words.KIND}/")) for p in r.data_files) == 1, r.data_files
        if how == "link":
            assert not any(p.startswith("/data/tags/") for p in r.data_files), r.data_files
        assert sum(p.startswith("/data/rank/") for p in r.data_files) == 1, r.data_files
        assert r.total <= MAX_BYTES, (r.what, r.bytes_by_kind)


# ---------------------------------------------------------------------------
# Beyond a tag's first results: the home page, a word that is no tag, the viewer
# ---------------------------------------------------------------------------
HOME_MAX_DATA_FILES = 3
LOOKUP_FILE_MAX = related_words.BUDGET_BYTES
SIMILAR_FILE_MAX = 10 * 1024
# manifest, the word's lookup file and, when the best related tag's results are shown, its first
# ranking page (the lookup file holds the tag's key: no tag shard)
UNKNOWN_MAX_DATA_FILES = 3
VIEWER_MAX_DATA_FILES = 1


def watch(page):
    responses = []
    page.on("response", lambda res: responses.append(res))
    return responses


def tally(site, responses) -> tuple[list[tuple[str, int]], dict[str, int]]:
    data_files, by_kind = [], {}
    for res in responses:
        path = urlparse(res.url).path
        k = kind(path)
        if k is None:
            continue
        assert res.status == 200, res.url
        size = len(res.body())
        by_kind[k] = by_kind.get(k, 0) + size
        if k == "data":
            data_files.append((path, size))
    return data_files, by_kind


def test_home_page_fits_the_budget(open_page, full_site, capsys):
    page = open_page().page
    responses = watch(page)
    page.goto(full_site.url)
    page.wait_for_selector("#popular .pop img")
    page.wait_for_load_state("networkidle")
    assert page.locator("#popular .pop").count() == 48
    data_files, by_kind = tally(full_site, responses)
    total = sum(by_kind.values())
    with capsys.disabled():
        print(f"\nhome page: {len(data_files)} data files {data_files}, {total} B total ({by_kind})")
    assert len(data_files) <= HOME_MAX_DATA_FILES
    assert [p for p, _ in data_files] == [f"/{site_data.MANIFEST_PATH}", f"/{site_data.DATA_DIR}/home.json"]
    assert total <= MAX_BYTES


@pytest.mark.parametrize("what", ["related only", "results shown"])
def test_a_word_that_is_no_tag_fits_the_budget(open_page, full_site, capsys, what):
    word = full_site.words[what]
    page = open_page().page
    responses = watch(page)
    page.goto(query_url(full_site.url, word))
    if what == "results shown":
        page.wait_for_selector(TILE)
        assert page.locator("#results-title").text_content().startswith("Showing results for")
    else:
        page.wait_for_selector("#related a")
    page.wait_for_load_state("networkidle")
    data_files, by_kind = tally(full_site, responses)
    lookup = [(p, s) for p, s in data_files if f"/{related_words.KIND}/" in p]
    total = sum(by_kind.values())
    with capsys.disabled():
        print(f"\nunknown word ({what}): {len(data_files)} data files {data_files}, {total} B total ({by_kind})")
    assert len(lookup) == 1 and lookup[0][1] <= LOOKUP_FILE_MAX
    assert not any("/tags/" in p for p, _ in data_files)  # no tag shard: the lookup file says it all
    assert len(data_files) <= UNKNOWN_MAX_DATA_FILES
    assert total <= MAX_BYTES


def test_opening_the_viewer_costs_one_small_more_like_this_file(open_page, full_site, capsys):
    tag = full_site.samples["most images"]
    page = open_page().page
    page.goto(query_url(full_site.url, tag))
    page.wait_for_selector(TILE)
    page.wait_for_load_state("networkidle")
    responses = watch(page)
    page.locator(TILE).first.click()
    page.wait_for_selector("#viewer-similar .mini")
    page.wait_for_load_state("networkidle")
    data_files, by_kind = tally(full_site, responses)
    with capsys.disabled():
        print(f"\nviewer: {data_files}, {sum(by_kind.values())} B ({by_kind})")
    assert len(data_files) == VIEWER_MAX_DATA_FILES and "/similar/" in data_files[0][0]
    assert data_files[0][1] <= SIMILAR_FILE_MAX
    assert sum(by_kind.values()) <= SIMILAR_FILE_MAX  # nothing else but the file (renditions excluded)
