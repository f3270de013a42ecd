"""Hostile tags and hostile URLs: shown as text, never run, never loaded or linked."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests import site_fixture as sf
from tests.site.helpers import TILE, open_home, open_query, query_url, suggestions, tiles, type_query, wait_tile_count

# every src/href in the page's body (the viewer dialog included), as written
ALL_URLS = """() => [...document.body.querySelectorAll('[src],[href]')]
  .map(e => e.getAttribute('src') ?? e.getAttribute('href'))"""


def assert_no_hostile_urls(urls: list[str]) -> None:
    for url in urls:
        low = url.strip().lower()
        assert not low.startswith(sf.HOSTILE_SCHEMES), url
        assert "evil.example" not in low and "outside.jpg" not in low and "/srv/" not in low, url


def test_markup_in_a_tag_is_shown_as_text(site_page, small_site):
    page = site_page
    open_home(page, small_site.url)
    type_query(page, "<img")
    expect(page.locator("#suggestions [role=option]").first).to_be_visible()
    assert suggestions(page)[0] == (sf.XSS_TAG, "3")
    page.keyboard.press("Enter")  # the only suggestion shown is taken
    expect(page.locator("#results-title")).to_have_text(f"“{sf.XSS_TAG}”")
    wait_tile_count(page, 3)

    page.goto(query_url(small_site.url, "<img"))  # an unknown tag: the markup tag offered as text
    expect(page.locator("#results-title")).to_have_text("No tag “<img”")
    expect(page.locator("#related a").first).to_be_visible()
    assert sf.XSS_TAG in page.locator("#related a").all_text_contents()

    type_query(page, sf.XSS_TAG)
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text(f"“{sf.XSS_TAG}”")
    wait_tile_count(page, 3)
    assert [r for r, _ in tiles(page)] == [1, 2, 3]
    page.locator(TILE).first.click()
    expect(page.locator("#viewer-title")).to_have_text(sf.XSS_TAG)
    # nothing was parsed as markup: the only images are the thumbnails and renditions we published
    srcs = page.eval_on_selector_all("img", "els => els.map(e => e.getAttribute('src'))")
    assert srcs and all(s.startswith((small_site.url + "thumbs/", small_site.url + "views/")) for s in srcs), srcs
    assert page.locator("img[onerror]").count() == 0
    assert sf.XSS_TAG in page.title()


@pytest.mark.parametrize(
    ("query", "tag"),
    [
        (sf.DOTDOT_TAG, sf.DOTDOT_TAG),
        ("CON", sf.CON_TAG),
        (sf.NUL_TAG, sf.NUL_TAG),
        (sf.LONG_TAG, sf.LONG_TAG),
    ],
    ids=["dotdot", "CON", "nul.txt", "300-bytes"],
)
def test_awkward_tags_open_their_page(site_page, small_site, query, tag):
    page = site_page
    open_query(page, small_site.url, query)
    expect(page.locator("#results-title")).to_have_text(f"“{tag}”")
    assert [r for r, _ in tiles(page)] == list(range(1, small_site.counts[tag] + 1))


def test_hostile_urls_are_never_loaded_or_linked(site_page, small_site):
    page = site_page
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    open_query(page, small_site.url, sf.HOSTILE_URLS_TAG)
    rows = tiles(page)
    bad = sf.HOSTILE_URL_ITEMS
    assert [r for r, _ in rows] == list(range(1, bad + 3))
    # hostile thumbnails became placeholders; the absolute and relative http ones load
    tile_imgs = page.locator(f"{TILE} img")
    expect(tile_imgs).to_have_count(2)
    assert page.locator(f"{TILE} .ph").count() == bad
    page.wait_for_function(
        "[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert_no_hostile_urls(page.evaluate(ALL_URLS))

    # walk the viewer over all items: a source is linked only when it is http(s)
    page.locator(TILE).first.click()
    linked = []
    for i in range(bad + 2):
        expect(page.locator("#viewer-meta")).to_have_attribute("data-rank", str(i + 1))
        assert_no_hostile_urls(page.evaluate(ALL_URLS))
        links = page.locator("#viewer-source a")
        if links.count():
            linked.append(links.get_attribute("href").startswith("https://images.example.org/"))
        else:
            # a hostile source is shown as plain text
            assert page.locator("#viewer-source").text_content().startswith("Original: ")
            linked.append(False)
        page.keyboard.press("ArrowRight")
    assert linked == [False] * bad + [True, True]
    page.keyboard.press("Escape")

    assert_no_hostile_urls(requested)
    assert all(url.startswith(small_site.url) for url in requested), requested
