"""Searching: typing and autocomplete, ranked results, paging by scroll, ?q= links,
back/forward, unknown tags and stale responses."""

from __future__ import annotations

import re
import time

from playwright.sync_api import expect

from export import site_data

from model import scoring
from model.tags import tag_key
from tests import site_fixture as sf
from tests.site.helpers import (
    TILE,
    open_home,
    open_query,
    query_url,
    suggestions,
    tiles,
    type_query,
    wait_tile_count,
)

PAGE = site_data.PAGE_SIZE  # the published page size, from the code


def test_header_says_what_the_site_is_in_plain_words(site_page, small_site):
    open_home(site_page, small_site.url)
    line = site_page.locator("#collection").text_content()
    images = sum(small_site.counts.values())
    assert f"{images:,} crawled images" in line
    assert f"{len(small_site.counts)} tags" in line
    # which model ranked it is the report's business, not the header's
    assert "efficientnet" not in line and "w2v" not in line and "matcher" not in line


def test_typing_suggests_prefix_matches_first_with_counts(site_page, small_site):
    page = site_page
    open_home(page, small_site.url)
    type_query(page, "re")
    expect(page.locator("#suggestions")).to_be_visible()
    expect(page.locator("#q")).to_have_attribute("aria-expanded", "true")
    assert suggestions(page) == [("red car", "150"), ("red", "70"), ("red apple", "12"), ("reddish", "5")]

    # prefix matches come before other matches ("blue car" only contains "car")
    type_query(page, "car")
    expect(page.locator("#suggestions [role=option]").first).to_have_text(re.compile("^car"))
    found = suggestions(page)
    assert found[0] == ("car", "40")
    assert ("blue car", "8") in found[1:]
    assert all(not tag.startswith("car") for tag, _ in found[1:])


def test_arrow_keys_and_enter_pick_a_suggestion(site_page, small_site):
    page = site_page
    open_home(page, small_site.url)
    type_query(page, "re")
    expect(page.locator("#suggestions [role=option]")).to_have_count(4)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    second = page.locator("#suggestions [role=option]").nth(1)
    expect(second).to_have_attribute("aria-selected", "true")
    expect(page.locator("#q")).to_have_attribute("aria-activedescendant", second.get_attribute("id"))
    page.keyboard.press("ArrowUp")
    expect(page.locator("#suggestions [role=option]").first).to_have_attribute("aria-selected", "true")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("“red”")
    expect(page).to_have_url(query_url(small_site.url, "red"))
    expect(page.locator("#suggestions")).to_be_hidden()
    wait_tile_count(page, PAGE)


def test_clicking_a_suggestion_shows_its_images(site_page, small_site):
    page = site_page
    open_home(page, small_site.url)
    type_query(page, "red a")
    page.locator("#suggestions [role=option]", has_text="red apple").click()
    expect(page.locator("#results-title")).to_have_text("“red apple”")
    wait_tile_count(page, 12)
    assert [rank for rank, _ in tiles(page)] == list(range(1, 13))
    assert "q=red+apple" in page.url


def test_results_are_in_rank_order_and_scrolling_loads_more(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, "red car")
    expect(page.locator("#results-note")).to_contain_text("150 images")
    wait_tile_count(page, PAGE)
    for expected in (120, 150):
        page.locator("#sentinel").scroll_into_view_if_needed()
        wait_tile_count(page, expected)
    expect(page.locator("#results-status")).to_have_text("End of results.")
    rows = tiles(page)
    assert [rank for rank, _ in rows] == list(range(1, 151))
    scores = [score for _, score in rows]
    assert all(s is not None for s in scores)
    assert all(a >= b for a, b in zip(scores, scores[1:]))


def test_the_note_says_in_words_what_ranked_the_tag_from_the_registry(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, "red car")
    note = page.locator("#results-note")
    expect(note).to_have_attribute("data-ranked-by", site_data.RANKED_BY_MATCHER)
    expect(note).to_contain_text(scoring.explanations()[site_data.RANKED_BY_MATCHER])


def test_index_ranked_tag_says_so_and_shows_no_scores(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, sf.OOV_TAG)
    note = page.locator("#results-note")
    expect(note).to_have_attribute("data-ranked-by", "index")
    expect(note).to_contain_text("index's order")
    rows = tiles(page)
    assert [r for r, _ in rows] == list(range(1, 26))
    assert all(score is None for _, score in rows)


def test_query_link_is_normalised_and_back_forward_rerender(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, "  Red\tCAR ")
    expect(page.locator("#results-title")).to_have_text("“red car”")
    expect(page.locator("#q")).to_have_value("red car")

    type_query(page, "dog")
    page.keyboard.press("Enter")
    expect(page).to_have_url(query_url(small_site.url, "dog"))
    wait_tile_count(page, 20)
    assert page.title().startswith("dog")

    page.go_back()
    expect(page.locator("#results-title")).to_have_text("“red car”")
    expect(page.locator("#q")).to_have_value("red car")
    wait_tile_count(page, PAGE)
    page.go_forward()
    expect(page.locator("#results-title")).to_have_text("“dog”")
    expect(page.locator("#q")).to_have_value("dog")
    wait_tile_count(page, 20)


def test_unknown_tag_offers_known_tags_by_spelling(site_page, small_site):
    page = site_page
    page.goto(query_url(small_site.url, "red cat"))
    expect(page.locator("#results-title")).to_have_text("No tag “red cat”")
    expect(page.locator("#instead")).to_contain_text("not in the collection")
    near = page.locator("#related a")
    expect(near.first).to_be_visible()
    assert "red car" in near.all_text_contents()
    assert page.locator(TILE).count() == 0

    # a transposition is one edit
    type_query(page, "dgo")
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("No tag “dgo”")
    expect(page.locator("#related a", has_text="dog")).to_be_visible()

    page.locator("#related a", has_text="dog").click()
    expect(page.locator("#results-title")).to_have_text("“dog”")
    expect(page).to_have_url(query_url(small_site.url, "dog"))
    wait_tile_count(page, 20)


def test_unknown_tag_without_neighbours_offers_the_popular_tags(site_page, small_site):
    page = site_page
    page.goto(query_url(small_site.url, "zzzzzzzzzzzz"))
    expect(page.locator("#instead")).to_have_text(re.compile("Nothing in the collection is tagged or spelled like it"))
    expect(page.locator("#related a").first).to_be_visible()
    popular = [t for t, _ in sorted(small_site.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:8]]
    assert page.locator("#related a").all_text_contents() == popular


def test_a_slow_older_query_never_replaces_a_newer_one(site_page, small_site):
    page = site_page
    open_home(page, small_site.url)
    slow = f"/data/rank/{tag_key(sf.SLOW_TAG)[:2]}/"
    small_site.server.delays[slow] = 1.5
    type_query(page, sf.SLOW_TAG)
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('results-status').textContent.includes('Loading')")
    type_query(page, "dog")
    page.keyboard.press("Enter")
    wait_tile_count(page, 20)
    time.sleep(1.8)  # the slow answer would have arrived by now
    expect(page.locator("#results-title")).to_have_text("“dog”")
    assert len(tiles(page)) == 20
    assert page.url == query_url(small_site.url, "dog")
