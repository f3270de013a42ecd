"""The larger view and a keyboard-only visit."""

from __future__ import annotations

from playwright.sync_api import expect

from export import site_data
from tests import site_fixture as sf
from tests.site.helpers import TILE, open_home, open_query, wait_tile_count

PAGE = site_data.PAGE_SIZE  # the published page size, from the code


def test_click_opens_viewer_with_tag_score_rank_and_source(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, "red car")
    page.locator(TILE).first.click()
    dialog = page.locator("#viewer")
    expect(dialog).to_be_visible()
    expect(page.locator("#viewer-title")).to_have_text("red car")
    expect(page.locator("#viewer-meta")).to_have_text("Rank 1 of 150 · strong match (score 2.500)")
    link = page.locator("#viewer-source a")
    assert link.get_attribute("href").startswith("https://images.example.org/crawl/")
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    img = page.locator("#viewer-figure img")
    expect(img).to_be_visible()
    assert img.evaluate("i => i.complete && i.naturalWidth > 0")
    page.mouse.click(3, 3)  # the backdrop closes it too
    expect(dialog).to_be_hidden()


def test_viewer_arrows_escape_and_focus_return(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, "red car")
    page.locator(TILE).nth(2).click()
    meta = page.locator("#viewer-meta")
    expect(meta).to_have_attribute("data-rank", "3")
    page.keyboard.press("ArrowRight")
    expect(meta).to_have_attribute("data-rank", "4")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(meta).to_have_attribute("data-rank", "2")
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    # focus lands on the tile of the image last shown
    expect(page.locator(f"{TILE}[data-index='1']")).to_be_focused()


def test_viewer_next_past_the_loaded_page_loads_it(site_page, small_site):
    page = site_page
    open_query(page, small_site.url, "red car")
    wait_tile_count(page, PAGE)
    page.locator(TILE).nth(PAGE - 1).click()
    meta = page.locator("#viewer-meta")
    expect(meta).to_have_attribute("data-rank", str(PAGE))
    page.keyboard.press("ArrowRight")
    expect(meta).to_have_attribute("data-rank", str(PAGE + 1))
    expect(meta).to_contain_text(f"Rank {PAGE + 1} of {sf.SMALL_COUNTS['red car']}")
    wait_tile_count(page, 2 * PAGE)
    page.keyboard.press("Escape")
    expect(page.locator(f"{TILE}[data-index='{PAGE}']")).to_be_focused()


def test_keyboard_only_flow(site_page, small_site):
    page = site_page
    open_home(page, small_site.url)
    order = []
    for _ in range(3):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.className || document.activeElement.tagName"))
    assert order == ["skip", "A", "q"], order
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"

    page.keyboard.type("red c")
    expect(page.locator("#suggestions [role=option]").first).to_have_text("red car150")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("“red car”")
    wait_tile_count(page, PAGE)

    page.keyboard.press("Tab")  # the Search button
    page.keyboard.press("Tab")  # the link to the "probably" strip, on the first page
    expect(page.locator("#strip-link")).to_be_focused()
    page.keyboard.press("Tab")  # the first tile
    expect(page.locator(f"{TILE}[data-index='0']")).to_be_focused()
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    page.keyboard.press("Tab")
    expect(page.locator(f"{TILE}[data-index='1']")).to_be_focused()
    page.keyboard.press("Enter")
    meta = page.locator("#viewer-meta")
    expect(meta).to_have_attribute("data-rank", "2")
    assert page.evaluate("document.getElementById('viewer').contains(document.activeElement)")
    page.keyboard.press("ArrowRight")
    expect(meta).to_have_attribute("data-rank", "3")
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page.locator(f"{TILE}[data-index='2']")).to_be_focused()
