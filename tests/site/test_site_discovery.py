"""Search that helps a person: the home page, words outside the tag set, more like this, copies
folded and the "probably" strip, with the mouse, the keyboard and at phone width."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests import site_fixture as sf
from tests.site.conftest import PHONE
from tests.site.helpers import TILE, open_home, open_query, query_url, type_query


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


# ---------------------------------------------------------------------------
# Home
# ---------------------------------------------------------------------------
def test_home_shows_popular_tags_with_thumbnails_facts_and_a_real_placeholder(site_page, small_site):
    page = site_page
    open_home(page, small_site.url)
    popular = page.locator("#popular .pop")
    expect(popular.first).to_contain_text("red car")
    names = page.locator("#popular .pop .tag").all_text_contents()
    assert names[:3] == ["red car", "red", "cat"], names
    assert len(names) == len(small_site.counts)  # fewer tags than the 48 shown at most
    first = page.locator("#popular .pop img").first
    expect(first).to_be_visible()
    page.wait_for_function("document.querySelector('#popular .pop img').naturalWidth > 0")
    expect(page.locator("#q")).to_have_attribute("placeholder", "Search a tag, e.g. red car")
    expect(page.locator("#home-facts")).to_contain_text("images under")
    popular.nth(2).click()
    expect(page.locator("#results-title")).to_have_text("“cat”")
    expect(page.locator("#home")).to_be_hidden()
    page.go_back()
    expect(page.locator("#home")).to_be_visible()


def test_a_to_z_shows_only_letters_with_tags_marks_the_current_and_pages_by_keyboard(site_page, small_site):
    page = site_page
    open_home(page, small_site.url)
    letters = page.locator("#az-letters button")
    # the small site's tags start with a, b, c, d, h, k, n, q, r, s, t, and a few with no letter
    expect(letters).to_have_text(["A", "B", "C", "D", "H", "K", "N", "Q", "R", "S", "T", "#"])
    page.locator("#az-letters button[data-letter=r]").focus()
    page.keyboard.press("Enter")
    listed = page.locator("#az-list a")
    expect(listed.first).to_be_focused()
    expect(page.locator("#az-letters button[data-letter=r]")).to_have_attribute("aria-pressed", "true")
    assert page.locator("#az-letters button[aria-pressed=true]").count() == 1
    # ordered and cut by the folded first letter: two tags a page on the small site
    expect(listed).to_have_text(["red", "red apple"])
    page.locator("#az-pager button", has_text="Next").click()
    expect(listed).to_have_text(["red car", "reddish"])
    expect(page.locator("#az-pager button", has_text="Next")).to_be_disabled()
    page.locator("#az-pager button", has_text="Previous").click()
    expect(listed).to_have_text(["red", "red apple"])
    page.locator("#az-letters button[data-letter=c]").click()
    expect(listed).to_have_text(["car", "cat"])
    expect(page.locator("#az-letters button[data-letter=r]")).to_have_attribute("aria-pressed", "false")
    listed.filter(has_text="cat").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("“cat”")


def test_a_to_z_at_phone_width(open_page, small_site):
    page = open_page(PHONE).page
    open_home(page, small_site.url)
    page.locator("#az-letters button[data-letter=c]").click()
    expect(page.locator("#az-list a")).to_have_text(["car", "cat"])
    expect(page.locator("#az-letters button[data-letter=c]")).to_have_attribute("aria-pressed", "true")
    assert no_horizontal_scroll(page)


def test_home_at_phone_width(open_page, small_site):
    page = open_page(PHONE).page
    open_home(page, small_site.url)
    expect(page.locator("#popular .pop").first).to_be_visible()
    columns = page.evaluate("getComputedStyle(document.getElementById('popular')).gridTemplateColumns.split(' ').length")
    assert columns == 3
    assert no_horizontal_scroll(page)


# ---------------------------------------------------------------------------
# Words outside the tag set
# ---------------------------------------------------------------------------
def test_a_close_related_word_shows_its_tags_results_labelled(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, "automobile")
    expect(page.locator("#results-title")).to_have_text("Showing results for “car”")
    expect(page.locator("#instead")).to_contain_text("No tag “automobile”")
    expect(page.locator("#related a")).to_have_text(["red car", "blue car"])
    expect(page.locator(f"{TILE} .rank").first).to_have_text("#1")


def test_an_unknown_word_lists_related_tags_in_one_list(site_page, small_site):
    page = site_page
    page.goto(query_url(small_site.url, "kitten"))
    expect(page.locator("#results-title")).to_have_text("No tag “kitten”")
    expect(page.locator("#instead")).to_have_text("That tag is not in the collection. Tags to try, best first:")
    expect(page.locator("#related a")).to_have_text(["cat", "dog"])
    expect(page.locator("#related .count").first).to_have_text("related · 61")
    assert page.locator("#near").count() == 0  # one list, not two
    page.locator("#related a", has_text="cat").click()
    expect(page.locator("#results-title")).to_have_text("“cat”")


def test_a_multi_word_query_merges_its_words_related_tags_typed_by_keyboard(site_page, small_site):
    page = site_page
    open_home(page, small_site.url)
    page.locator("#q").focus()
    type_query(page, "crimson vehicle")
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("No tag “crimson vehicle”")
    related = page.locator("#related a")
    expect(related.first).to_be_visible()
    assert set(related.all_text_contents()) == {"red", "car", "blue car", "reddish"}
    # each word's best tag is among the first two
    assert set(related.all_text_contents()[:2]) == {"red", "car"}


def test_a_hostile_related_tag_is_shown_as_text(site_page, small_site):
    page = site_page
    page.goto(query_url(small_site.url, sf.XSS_TAG + "x"))
    expect(page.locator("#related a")).to_have_text([sf.XSS_TAG])
    assert page.locator("#results img[src='x']").count() == 0


# ---------------------------------------------------------------------------
# More like this, copies
# ---------------------------------------------------------------------------
def test_viewer_shows_more_like_this_and_opens_them(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, "red car")
    page.locator(TILE).first.click()
    minis = page.locator("#viewer-similar .mini")
    expect(minis).to_have_count(12)
    first_tag = minis.first.locator(".cap").text_content()
    minis.first.click()
    expect(page.locator("#viewer-meta")).to_contain_text("More like this: 1 of 12")
    expect(page.locator("#viewer-title")).to_have_text(first_tag)
    # the neighbour's own record arrived: its source and its own neighbours
    expect(page.locator("#viewer-source a")).to_have_attribute("href", re.compile(r"^https://images\.example\.org/"))
    expect(minis).to_have_count(12)
    page.keyboard.press("ArrowRight")
    expect(page.locator("#viewer-meta")).to_contain_text("More like this: 2 of 12")
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page.locator(f"{TILE}[data-index='0']")).to_be_focused()


def test_more_like_this_by_keyboard_and_at_phone_width(open_page, small_site):
    page = open_page(PHONE).page
    open_query(page, small_site.url, "cat")
    page.locator(TILE).nth(1).focus()
    page.keyboard.press("Enter")
    minis = page.locator("#viewer-similar .mini")
    expect(minis).to_have_count(12)
    minis.nth(3).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#viewer-meta")).to_contain_text("More like this: 4 of 12")
    assert page.evaluate("document.getElementById('viewer').contains(document.activeElement)")
    box = page.locator("#viewer").bounding_box()
    assert box["width"] <= PHONE["width"]
    page.keyboard.press("Escape")
    expect(page.locator(f"{TILE}[data-index='1']")).to_be_focused()


def test_copies_are_folded_with_a_badge_and_listed_in_the_viewer(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, sf.COPIES_TAG)
    expect(page.locator(f"{TILE}[data-index='0'] .copies")).to_have_text("3 copies")
    assert page.locator(f"{TILE} .copies").count() == 1
    expect(page.locator("#results-note")).to_contain_text("28 images")
    page.locator(TILE).first.click()
    copies = page.locator("#viewer-copies")
    expect(copies).to_contain_text("3 copies of this picture")
    expect(copies.locator("a")).to_have_count(2)


# ---------------------------------------------------------------------------
# "Probably" strip
# ---------------------------------------------------------------------------
def test_probably_strip_follows_the_tags_own_images_with_evidence(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, sf.STRIP_TAG)
    strip = page.locator("#probably")
    expect(strip).to_be_visible()
    expect(page.locator("#probably-title")).to_have_text(f"Probably “{sf.STRIP_TAG}”, crawled under another tag ({sf.STRIP_ITEMS})")
    tiles = page.locator("#probably-list .tile")
    expect(tiles).to_have_count(sf.STRIP_ITEMS)
    # one sentence: why it is here, never against the heading
    expect(tiles.first.locator(".evidence")).to_have_text(
        "Crawled as “cat”, but 16 of the 20 images most like it are “dog”, and the matcher agrees."
    )
    assert "σ" not in page.locator("#probably").inner_text()
    # after the grid, not in it
    assert page.evaluate("document.getElementById('grid').compareDocumentPosition(document.getElementById('probably')) & 4")
    tiles.nth(1).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#viewer-meta")).to_contain_text("Probably “dog”: 2 of 5")
    expect(page.locator("#viewer-meta")).to_contain_text("crawled as “cat”")
    page.keyboard.press("Escape")
    expect(tiles.nth(1)).to_be_focused()


def test_probably_strip_waits_for_the_end_of_a_long_ranking(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, "red car")
    page.wait_for_load_state("networkidle")
    expect(page.locator("#probably")).to_be_hidden()
    for _ in range(6):
        page.mouse.wheel(0, 6000)
        page.wait_for_timeout(150)
    expect(page.locator("#results-status")).to_have_text("End of results.")
    expect(page.locator("#probably-list .tile")).to_have_count(2)


def test_a_long_rankings_first_page_links_to_its_probably_strip(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, "red car")  # three pages; its strip comes after the last
    link = page.locator("#strip-link")
    expect(link).to_have_text("Probably “red car”, crawled under another tag (2)")
    expect(page.locator("#probably")).to_be_hidden()
    link.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#probably-list .tile")).to_have_count(2)
    expect(page.locator("#probably-title")).to_be_focused()
    expect(page.locator("#probably")).to_be_in_viewport()
    # right under the link, before the ranking's endless pages
    assert page.evaluate("document.getElementById('probably').compareDocumentPosition(document.getElementById('grid')) & 4")
    # a matcher below the tag's typical image is not called agreement
    evidence = page.locator("#probably-list .evidence").first.text_content()
    assert evidence == "Crawled as “car”, but 12 of the 20 images most like it are “red car”."


def test_the_probably_link_at_phone_width(open_page, small_site):
    page = open_page(PHONE).page
    open_query(page, small_site.url, "red car")
    page.locator("#strip-link").click()
    expect(page.locator("#probably-list .tile")).to_have_count(2)
    expect(page.locator("#probably")).to_be_in_viewport()
    assert no_horizontal_scroll(page)
