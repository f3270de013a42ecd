"""Every query leads somewhere, Back works, and the viewer is worth opening: one ranked
list of tags to try, the popular tags when nothing matches, Enter on the only suggestion, the
viewer in the history and its larger rendition, reload and Back restoring pages and scroll, and
scores in words. Each at desktop and at phone width, by keyboard where a person would use it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from export import score_labels, site_data
from tests import site_fixture as sf
from tests.site.conftest import DESKTOP, PHONE
from tests.site.helpers import TILE, offered, open_home, open_query, query_url, type_query, wait_tile_count

PAGE = site_data.PAGE_SIZE
WIDTHS = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


# ---------------------------------------------------------------------------
# No dead ends
# ---------------------------------------------------------------------------
@WIDTHS
def test_several_words_offer_the_tags_among_them(open_page, small_site, viewport):
    page = open_page(viewport).page
    open_home(page, small_site.url)
    page.locator("#q").focus()
    type_query(page, "fast car")
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("No tag “fast car”")
    expect(page.locator("#related a").first).to_have_text("car")
    assert offered(page)[0] == ("car", "word")
    expect(page.locator("#related li").first.locator(".count")).to_have_text("one of your words · 40")
    # by keyboard: Tab from the search box reaches the offered tag
    page.locator("#related a").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("“car”")
    wait_tile_count(page, 40)
    assert no_horizontal_scroll(page)


@WIDTHS
def test_a_word_with_nothing_related_or_spelled_like_it_offers_the_popular_tags(open_page, small_site, viewport):
    page = open_page(viewport).page
    page.goto(query_url(small_site.url, "puppy"))
    expect(page.locator("#results-title")).to_have_text("No tag “puppy”")
    expect(page.locator("#instead")).to_contain_text("Popular tags")
    expect(page.locator("#related a").first).to_have_text("red car")
    assert {why for _, why in offered(page)} == {"popular"}
    assert no_horizontal_scroll(page)


@WIDTHS
def test_enter_takes_the_only_suggestion_shown(open_page, small_site, viewport):
    page = open_page(viewport).page
    open_home(page, small_site.url)
    type_query(page, "tre")
    expect(page.locator("#suggestions [role=option]")).to_have_count(1)
    expect(page.locator("#suggestions [role=option] .tag")).to_have_text("tree")
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("“tree”")
    expect(page).to_have_url(query_url(small_site.url, "tree"))
    wait_tile_count(page, sf.SMALL_COUNTS["tree"])
    # with several shown and none chosen, Enter searches the typed text as before
    type_query(page, "re")
    expect(page.locator("#suggestions [role=option]").nth(1)).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("No tag “re”")


@WIDTHS
def test_related_and_spelled_like_tags_are_one_ranked_list(open_page, small_site, viewport):
    page = open_page(viewport).page
    # "catt" is a word of the vocabulary: related to dog, and one edit from cat
    page.goto(query_url(small_site.url, "catt"))
    expect(page.locator("#related a").first).to_be_visible()
    assert offered(page) == [("cat", "spelled"), ("dog", "related")]
    assert page.locator("#results ul.near").count() == 1  # one list, not two
    # "kitten" is related to cat and dog; a tag two edits away ("kite") never comes first
    page.goto(query_url(small_site.url, "kitten"))
    expect(page.locator("#related a").first).to_have_text("cat")
    # a word outside the vocabulary: its spelling neighbours only
    page.goto(query_url(small_site.url, "kiten"))
    expect(page.locator("#related a").first).to_be_visible()
    assert offered(page)[0] == ("kite", "spelled")


# ---------------------------------------------------------------------------
# A viewer worth opening, in the history
# ---------------------------------------------------------------------------
@WIDTHS
def test_the_viewer_loads_the_larger_rendition_after_the_thumbnail(open_page, small_site, viewport):
    page = open_page(viewport).page
    open_query(page, small_site.url, "red car")
    page.locator(TILE).first.focus()
    page.keyboard.press("Enter")
    img = page.locator("#viewer-figure img")
    expect(img).to_have_attribute("srcset", re.compile(r"thumbs/.* 256w, .*views/.* 768w"))
    page.wait_for_function("document.querySelector('#viewer-figure img').complete"
                           " && document.querySelector('#viewer-figure img').naturalWidth > 0")
    # the rendition replaced the thumbnail (the fixture's: 384 px, the thumbnail 64)
    assert "/views/" in img.evaluate("i => i.currentSrc")
    assert img.evaluate("i => i.naturalWidth") > 64
    link = page.locator("#viewer-source a")
    expect(link).to_have_text("Open the original")
    assert link.get_attribute("href").startswith("https://images.example.org/")
    box = page.locator("#viewer").bounding_box()
    assert box["width"] <= viewport["width"]


@WIDTHS
def test_opening_the_viewer_is_a_history_entry_and_back_closes_it(open_page, small_site, viewport):
    page = open_page(viewport).page
    open_query(page, small_site.url, "red car")
    tile = page.locator(TILE).nth(2)
    tile.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#viewer")).to_be_visible()
    expect(page).to_have_url(re.compile(r"\?q=red\+car&i=[0-9a-f]{16}$"))
    first = page.url
    page.keyboard.press("ArrowRight")  # stepping replaces the entry, never adds one
    expect(page).not_to_have_url(first)
    stepped = page.url
    page.go_back()
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page).to_have_url(query_url(small_site.url, "red car"))
    expect(page.locator("#results-title")).to_have_text("“red car”")
    page.go_forward()
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#viewer-meta")).to_have_attribute("data-rank", "4")
    assert page.url == stepped
    # Esc closes it and leaves its history entry
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page).to_have_url(query_url(small_site.url, "red car"))


@WIDTHS
def test_a_shared_link_opens_the_viewer(open_page, small_site, viewport):
    page = open_page(viewport).page
    item = sf.make_items("red car", 5)[4]
    page.goto(query_url(small_site.url, "red car") + f"&i={item['image_id']}")
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#viewer-meta")).to_have_attribute("data-rank", "5")
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page).to_have_url(query_url(small_site.url, "red car"))
    expect(page.locator(f"{TILE}[data-index='4']")).to_be_focused()
    # an image beyond the loaded pages opens alone
    far = sf.make_items("red car", 150)[140]
    page.goto(query_url(small_site.url, "red car") + f"&i={far['image_id']}")
    expect(page.locator("#viewer-meta")).to_contain_text("Shared image")
    expect(page.locator("#viewer-figure img")).to_be_visible()


@WIDTHS
def test_reload_and_back_restore_the_pages_loaded_and_the_scroll(open_page, small_site, viewport):
    page = open_page(viewport).page
    open_query(page, small_site.url, "red car")
    page.locator("#sentinel").scroll_into_view_if_needed()
    wait_tile_count(page, 2 * PAGE)
    page.locator(f"{TILE}[data-index='{PAGE + 10}']").scroll_into_view_if_needed()
    page.wait_for_timeout(400)  # the scroll position is saved after a pause
    y = page.evaluate("scrollY")
    assert y > 1000
    page.reload()
    wait_tile_count(page, 2 * PAGE)
    page.wait_for_function(f"Math.abs(scrollY - {y}) < 5")

    # the viewer opened and closed with Back: the page stays where it was
    page.locator(f"{TILE}[data-index='{PAGE + 10}']").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#viewer")).to_be_visible()
    page.go_back()
    expect(page.locator("#viewer")).to_be_hidden()
    page.wait_for_function(f"Math.abs(scrollY - {y}) < 400")
    y = page.evaluate("scrollY")
    page.wait_for_timeout(400)

    # a link to another page, then Back
    page.goto(query_url(small_site.url, "dog"))
    wait_tile_count(page, 20)
    page.go_back()
    wait_tile_count(page, 2 * PAGE)
    page.wait_for_function(f"Math.abs(scrollY - {y}) < 5")
    expect(page.locator("#results-title")).to_have_text("“red car”")


# ---------------------------------------------------------------------------
# Plain words
# ---------------------------------------------------------------------------
@WIDTHS
def test_a_tiles_score_is_a_short_label_with_the_number_in_its_title(open_page, small_site, viewport):
    page = open_page(viewport).page
    open_query(page, small_site.url, "red car")
    page.locator("#sentinel").scroll_into_view_if_needed()
    wait_tile_count(page, 2 * PAGE)
    scores = page.locator(f"{TILE} .score")
    first = page.locator(TILE).first
    expect(scores.first).to_have_text("strong match")
    assert first.get_attribute("title").startswith("Score 2.500")
    assert "strong match (score 2.500)" in first.get_attribute("aria-label")
    labels = scores.all_text_contents()
    numbers = [float(x) for x in page.eval_on_selector_all(f"{TILE} .score", "els => els.map(e => e.dataset.score)")]
    # the labels follow the one table the manifest publishes (export/score_labels.py)
    assert labels == [score_labels.label(n) for n in numbers]
    assert {"strong match", "typical", "doubtful"} <= set(labels)
    assert not any(re.fullmatch(r"-?\d+\.\d+", t) for t in labels)


@WIDTHS
def test_one_report_link_and_no_model_names_in_the_header(open_page, small_site, viewport):
    page = open_page(viewport).page
    open_home(page, small_site.url)
    expect(page.locator("#collection")).to_contain_text("crawled images")
    assert "efficientnet" not in page.locator("header.top").inner_text()
    # the small site names no report: no link at all, and never two
    assert page.get_by_text("How this ranking was made").count() <= 1
